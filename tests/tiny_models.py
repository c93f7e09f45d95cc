"""Tiny SoundCTM components built in code under a fixed seed, with tokenizers built locally (nothing downloaded).

Used by the tests of every part of the project (pipeline, distillation, hub export, app).
"""

import json
import math

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    ClapTextConfig,
    ClapTextModelWithProjection,
    PreTrainedTokenizerFast,
    RobertaTokenizer,
    T5Config,
    T5EncoderModel,
)

from diffusers import StableAudioDiTModel, StableAudioProjectionModel, UNet2DConditionModel

from hub.unet16k_checkpoints import tango_unet_config
from soundctm import (
    AutoencoderGaussianDAC,
    AutoencoderLogMel,
    AutoencoderMelVocoder,
    AutoencoderOobleckSoundCTM,
    CTMScheduler,
    EDMHeunScheduler,
    SoundCTMDiTModel,
    SoundCTMPipeline,
    SoundCTMStableAudioDiTModel,
    SoundCTMStableAudioPipeline,
    SoundCTMUNet2DConditionModel,
)

WORDS = (
    "a the dog barks cat meows bird chirps siren wails rain falls on roof engine hums loud soft low high pitch "
    "tone beep noise clicks knocks sweeping up down fading in out hiss rumble quiet distant close fast slow "
    "car horn door slams water flows wind blows man speaks woman laughs bell rings"
).split()
PROMPTS = ["a dog barks", "rain falls on a roof", "a siren wails", "a bird chirps", "an engine hums"]


def tiny_roberta_tokenizer(model_max_length: int = 77) -> RobertaTokenizer:
    """A real byte-level BPE RoBERTa tokenizer with a small vocabulary trained on `WORDS` (deterministic)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" ".join(WORDS)] * 4 + PROMPTS,
        vocab_size=320,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    model = json.loads(bpe.to_str())["model"]
    return RobertaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], model_max_length=model_max_length)


def tiny_bert_tokenizer(model_max_length: int = 64) -> BertTokenizer:
    """A real WordPiece BERT tokenizer whose vocabulary is `WORDS` plus single letters."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in vocab] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    return BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 32) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that ends every text with </s> and pads with <pad> (id 0), as T5's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(["<pad>", "</s>", "<unk>"] + sorted(set(WORDS) | {"an", "now"}))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=model_max_length
    )


def tiny_text_encoder(text_embedding: str, seed: int = 0):
    """(text_encoder, tokenizer, embedding width) for "projected"/"pooled" (CLAP), "mean" (BERT) or "sequence"
    (a T5 encoder, as FLAN-T5 conditions the 16 kHz family)."""
    torch.manual_seed(seed)
    if text_embedding in ("projected", "pooled"):
        tokenizer = tiny_roberta_tokenizer()
        config = ClapTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            projection_dim=16,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
        )
        encoder = ClapTextModelWithProjection(config).eval()
        width = 16 if text_embedding == "projected" else 32
    elif text_embedding == "mean":
        tokenizer = tiny_bert_tokenizer()
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=128,
        )
        encoder = BertModel(config).eval()  # with its pooler, as BertModel.from_pretrained builds it
        width = 16
    elif text_embedding == "sequence":
        tokenizer = tiny_t5_tokenizer()
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=16,
            d_kv=4,
            d_ff=32,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
        encoder = T5EncoderModel(config).eval()
        width = 16
    else:
        raise ValueError(text_embedding)
    return encoder, tokenizer, width


def tiny_vae(seed: int = 0, **overrides) -> AutoencoderGaussianDAC:
    torch.manual_seed(seed)
    config = dict(
        encoder_dim=4,
        encoder_rates=[2, 4],
        latent_dim=4,
        decoder_dim=16,
        decoder_rates=[4, 2],
        sampling_rate=44100,
        latents_mean=[0.1, -0.2, 0.0, 0.3],
        latents_std=[0.9, 1.1, 1.0, 0.8],
    )
    config.update(overrides)
    return AutoencoderGaussianDAC(**config).eval()


def tiny_log_mel_vae(seed: int = 0, latent_dim: int = 8) -> AutoencoderLogMel:
    """A small spectral codec (n_fft 256, 16 mel bands, 2 STFT frames of hop 64 per latent frame) whose projection is
    a PCA fitted to tones (random pitch, level ramp and phase) and white noise, like the demo's codec."""
    from recipes.procedural.train_codec import fit_codec

    g = torch.Generator().manual_seed(seed)
    codec = AutoencoderLogMel(n_fft=256, stft_hop_length=64, frames_per_latent=2, n_mels=16, latent_dim=latent_dim,
                              griffin_lim_iters=8).eval()  # fmt: skip
    t = torch.arange(64 * codec.hop_length) / codec.config.sampling_rate
    ramps = 10 ** (torch.linspace(-30, 0, len(t))[None] * torch.randn(16, 1, generator=g) / 20)
    freqs = 200 * 2 ** (5 * torch.rand(8, 1, generator=g))
    tones = torch.sin(2 * math.pi * freqs * t + 6.3 * torch.rand(8, 1, generator=g))
    signals = 0.3 * ramps * torch.cat([tones, 0.3 * torch.randn(8, len(t), generator=g)])
    fit_codec(codec, (signals.clamp(-1, 1) * 32767).to(torch.int16).numpy())
    return codec


def tiny_transformer(cross_attention_dim: int, is_student: bool = True, seed: int = 0, **overrides) -> SoundCTMDiTModel:
    """A 2-layer DiT with every weight random (the zero-initialised ones too, so conditioning matters)."""
    torch.manual_seed(seed)
    config = dict(
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        cross_attention_dim=cross_attention_dim,
        timestep_features_dim=16,
        ff_mult=2,
        sample_size=16,
        is_student=is_student,
    )
    config.update(overrides)
    model = SoundCTMDiTModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    return model.eval()


def tiny_pipeline(student: bool = True, text_embedding: str = "projected", seed: int = 0) -> SoundCTMPipeline:
    text_encoder, tokenizer, width = tiny_text_encoder(text_embedding, seed)
    scheduler = CTMScheduler() if student else EDMHeunScheduler()
    return SoundCTMPipeline(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=tiny_transformer(width, is_student=student, seed=seed),
        scheduler=scheduler,
        text_embedding=text_embedding,
    )


# ------------------------------------------------------------------------------------------ the 16 kHz family
# Tiny sizes of the same structure as AudioLDM-S: three VAE levels (4× down in time and mel bins), a HiFi-GAN whose
# upsampling multiplies to the STFT hop.
MEL = dict(sampling_rate=16000, n_fft=256, win_length=256, stft_hop_length=40, n_mels=16, f_min=0.0, f_max=8000.0)
CHANNELS, LAYERS, LATENT = [4, 8, 8], 1, 4
VAE = dict(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
           block_out_channels=CHANNELS, layers_per_block=LAYERS, latent_channels=LATENT, norm_num_groups=2, sample_size=32)  # fmt: skip
VOCODER = dict(model_in_dim=16, sampling_rate=16000, upsample_initial_channel=8, upsample_rates=[5, 8], upsample_kernel_sizes=[11, 16],
               resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=False)  # fmt: skip


def tiny_mel_vocoder(seed: int = 0, **config) -> AutoencoderMelVocoder:
    """Random weights at trained-network scales (HiFi-GAN's N(0, 0.01) init would make a near-silent vocoder)."""
    torch.manual_seed(seed)
    model = AutoencoderMelVocoder(vae_config=VAE, vocoder_config=VOCODER, latent_dim=LATENT, **MEL, **config)
    with torch.no_grad():
        for module in model.vocoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                module.reset_parameters()
    return model.eval()


def offset_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight offset by 0.05·N(0, 1) from a generator seeded with `seed` (no weight zero, no two tensors alike);
    the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_unet(student: bool, cross_attention_dim: int, seed: int = 0, frames: int = 8) -> UNet2DConditionModel:
    """TANGO's UNet (its block types, linear projection, upcast attention), small, on `tiny_mel_vocoder`'s latents
    `(LATENT, frames, n_mels / 4)`; every weight offset at random so that no two tensors are alike. The student is
    built from the teacher, as distillation starts it."""
    torch.manual_seed(seed)
    config = tango_unet_config(
        sample_size=(frames, MEL["n_mels"] // 4),
        in_channels=LATENT,
        out_channels=LATENT,
        block_out_channels=[8, 16, 16, 16],
        attention_head_dim=[2, 2, 4, 4],
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=cross_attention_dim,
    )
    model = UNet2DConditionModel(**config)
    if student:
        model = SoundCTMUNet2DConditionModel.from_teacher(model)
    return offset_weights(model, seed + 1)


def tiny_unet16k_pipeline(student: bool = True, seed: int = 0) -> SoundCTMPipeline:
    """The 16 kHz family in miniature: a TANGO-type UNet on mel-VAE latents, T5 token conditioning, σ_data 0.25."""
    text_encoder, tokenizer, width = tiny_text_encoder("sequence", seed)
    vae = tiny_mel_vocoder(seed, latents_std=[0.25 / 0.8] * LATENT, scaling_factor=0.25)
    scheduler = CTMScheduler(sigma_data=0.25) if student else EDMHeunScheduler(sigma_data=0.25)
    return SoundCTMPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=tiny_unet(student, width, seed),
        scheduler=scheduler,
        text_embedding="sequence",
        guidance_scale=3.5,
    )


def tiny_stable_audio_dit(cross_attention_input_dim: int, seed: int = 0, frames: int = 8) -> StableAudioDiTModel:
    """A tiny Stable Audio Open DiT (diffusers' own class: the teacher), every weight offset from its init so that no
    weight is zero."""
    torch.manual_seed(seed)
    model = StableAudioDiTModel(
        sample_size=frames,
        in_channels=LATENT,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        num_key_value_attention_heads=2,
        out_channels=LATENT,
        cross_attention_dim=16,
        time_proj_dim=16,
        global_states_input_dim=2 * cross_attention_input_dim,
        cross_attention_input_dim=cross_attention_input_dim,
    )
    return offset_weights(model, seed + 1)


def tiny_oobleck_vae(seed: int = 0, sampling_rate: int = 44100) -> AutoencoderOobleckSoundCTM:
    """Stable Audio's stereo VAE in miniature (hop 4)."""
    torch.manual_seed(seed)
    return AutoencoderOobleckSoundCTM(
        encoder_hidden_size=2 * LATENT,
        downsampling_ratios=[2, 2],
        channel_multiples=[1, 2],
        decoder_channels=4,
        decoder_input_channels=LATENT,
        audio_channels=2,
        sampling_rate=sampling_rate,
    ).eval()


def tiny_stable_audio_pipeline(student: bool = True, seed: int = 0) -> SoundCTMStableAudioPipeline:
    """The Stable Audio Open family in miniature: a StableAudioDiTModel teacher (or its SoundCTM student) on stereo
    Oobleck latents, T5 + seconds conditioning through StableAudioProjectionModel, v-prediction with c_noise =
    atan(σ)·2/π, σ in [0.3, 500], σ_data 1."""
    text_encoder, tokenizer, width = tiny_text_encoder("sequence", seed)
    cond = 12
    torch.manual_seed(seed)
    # seconds normalised over [0, 1 ms]: the tiny model makes 32 samples (0.73 ms) at 44.1 kHz
    projection = StableAudioProjectionModel(text_encoder_dim=width, conditioning_dim=cond, min_value=0, max_value=0.001).eval()
    transformer = tiny_stable_audio_dit(cond, seed)
    if student:
        transformer = SoundCTMStableAudioDiTModel.from_teacher(transformer).eval()
    edm = dict(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, prediction_type="v_prediction", noise_conditioning="atan")
    scheduler = CTMScheduler(**edm) if student else EDMHeunScheduler(**edm)
    return SoundCTMStableAudioPipeline(
        vae=tiny_oobleck_vae(seed),
        text_encoder=text_encoder,
        projection_model=projection,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=scheduler,
        guidance_scale=4.0,
    )
