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

from soundctm import AutoencoderGaussianDAC, AutoencoderLogMel, CTMScheduler, EDMHeunScheduler, SoundCTMDiTModel, SoundCTMPipeline

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
