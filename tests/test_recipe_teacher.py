"""The recipe's teacher stage (recipes/procedural/train_teacher.py): the data-dependent start of the conditioning path,
the checks of a trained teacher, and that in the spectral codec's latent space a small DiT learns fades from captions."""

import math

import numpy as np
import torch
from tiny_models import tiny_log_mel_vae, tiny_pipeline, tiny_text_encoder, tiny_transformer

from recipes.procedural.sounds import synthesize
from recipes.procedural.train_teacher import (
    POSITION_SCALE,
    conditioning_check,
    describe,
    edm_loss,
    init_context_embedding,
    signed_fade_db,
    teacher_denoiser,
)
from soundctm import EDMHeunScheduler, SoundCTMPipeline


def caption_like_embeddings(count=40, width=32, varying=6, spread=0.04, seed=0):
    """Unit vectors that share one large direction and differ little around it, in `varying` directions: how
    the demo's mean-pooled, L2-normalised MiniLM caption embeddings look (per-dimension std ~0.04)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(width, generator=g)
    directions = torch.linalg.qr(torch.randn(width, varying, generator=g))[0]
    offsets = spread * (width**0.5) * torch.randn(count, varying, generator=g) @ directions.T
    return torch.nn.functional.normalize(common / common.norm() + offsets, dim=-1)


def test_whitened_start_makes_captions_differ_by_order_one_where_the_default_start_hides_them():
    embeddings = caption_like_embeddings()
    default = tiny_transformer(32, is_student=False)
    whitened = tiny_transformer(32, is_student=False)
    with torch.no_grad():
        before = default.context_embedding(embeddings).std(0).mean().item()
        report = init_context_embedding(whitened, embeddings)
        context = whitened.context_embedding(embeddings)
        # the shared direction is projected out before whitening: it adds no offset to the first layer
        offset = whitened.context_embedding.linear_1(embeddings.mean(0))
    assert before < 0.1
    assert report["context_components"] <= 7  # 6 varying directions (+ the normalisation's bend of the common one)
    torch.testing.assert_close(context.std(0), torch.ones(32), atol=1e-4, rtol=1e-4)
    assert offset.abs().max().item() < 1e-4
    distances = torch.cdist(context, context)[~torch.eye(len(context), dtype=torch.bool)]
    assert distances.min().item() > 0.1 * 32**0.5


def test_conditioning_check_sees_whether_the_network_reads_its_captions():
    pipe = tiny_pipeline(student=False, text_embedding="mean")
    latents = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    captions = ["a dog barks", "rain falls on a roof", "a siren wails"]
    with torch.no_grad():
        reads = conditioning_check(pipe, latents, captions)
        for block in pipe.transformer.transformer_blocks:  # cut the only path the text has into the network
            block.attn2.to_out.weight.zero_()
        ignores = conditioning_check(pipe, latents, captions)
    own, other = "denoise_error_sigma_1_own_caption", "denoise_error_sigma_1_other_caption"
    assert reads[own] != reads[other]
    assert ignores[own] == ignores[other]


def test_describe_reports_the_verdict_and_the_measurements_behind_it():
    clip = synthesize({"source": "tone", "pitch": "mid", "envelope": "fade_out"}, np.random.default_rng(0))
    right = describe(clip, "the sound of a medium-pitched tone fading out")
    wrong = describe(clip, "the sound of a medium-pitched tone slowly getting louder")
    assert right["matched"] and not wrong["matched"]
    assert right["measured"] == {"source": "tone", "pitch": "mid", "envelope": "fade_out"}
    assert right["pitch_jitter"] < 0.2 and 450 < right["centroid_hz"] < 2000 and right["fade_db"] < -12


def test_signed_fade_counts_a_fade_in_the_prompts_direction_as_positive_and_skips_steady_prompts():
    measured = [{"fade_db": 30.0}, {"fade_db": -20.0}, {"fade_db": 25.0}, {"fade_db": 5.0}]
    assert signed_fade_db(measured, ["fade_in", "fade_out", "fade_out", None]) == round((30 + 20 - 25) / 3, 1)
    assert signed_fade_db(measured[3:], ["steady"]) is None


def fading_tones(codec, count: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Tones of random pitch (300-3000 Hz) and phase that fade in or out by 30 dB over the clip (32 latent frames),
    alternately: `(count, 1, samples)` and their envelopes."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(32 * codec.hop_length) / codec.config.sampling_rate
    ramp = 10 ** (torch.linspace(-30, 0, len(t)) / 20)
    envelopes = ["fade_in" if i % 2 == 0 else "fade_out" for i in range(count)]
    freqs = 300 * 10 ** torch.rand(count, 1, generator=g)
    tones = torch.sin(2 * math.pi * freqs * t + 2 * math.pi * torch.rand(count, 1, generator=g))
    gains = torch.stack([ramp if e == "fade_in" else ramp.flip(0) for e in envelopes])
    return (0.5 * gains * tones)[:, None], envelopes


def frame_level_change_db(audio: torch.Tensor, hop: int) -> torch.Tensor:
    """Per clip: level of its last quarter minus its first, in dB."""
    power = audio[:, 0].reshape(len(audio), -1, hop).pow(2).mean(-1)
    quarters = power.tensor_split(4, dim=1)
    return 10 * torch.log10(quarters[-1].mean(1) / quarters[0].mean(1))


def test_in_the_codec_latents_a_small_dit_learns_a_caption_selected_fade_and_its_samples_fade():
    """The capability the old waveform-codec demo teacher never had: with log-mel latents a fade is the class mean,
    which the denoiser returns at high noise, so a tiny DiT with absolute positions learns it in a few hundred EDM
    steps, and Heun samples of each caption fade its way: +23 / −22 dB here, +14 / −17 and +21 / −19 with other
    training seeds, where the data's fades are ±22.5 dB (`pytest -s` prints them)."""
    codec = tiny_log_mel_vae()
    audio, envelopes = fading_tones(codec, 64)
    latents = codec.standardize(codec.encode(audio).latent_dist.mean)
    _, _, width = tiny_text_encoder("mean")
    tokens = {e: torch.randn(1, 1, width, generator=torch.Generator().manual_seed(i)) for i, e in enumerate(("fade_in", "fade_out"))}
    cond = torch.cat([tokens[e] for e in envelopes])
    text_encoder, tokenizer, _ = tiny_text_encoder("mean")
    torch.manual_seed(0)
    transformer = tiny_transformer(width, is_student=False, in_channels=codec.config.latent_dim, sample_size=32,
                                   sinusoidal_position_embedding=True).train()  # fmt: skip
    with torch.no_grad():  # as train_teacher starts them: positions as large as the content (POSITION_SCALE)
        transformer.position_embedding.scale.fill_(POSITION_SCALE)
    pipe = SoundCTMPipeline(vae=codec, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                            scheduler=EDMHeunScheduler(sigma_data=0.5), text_embedding="mean")  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    denoiser = teacher_denoiser(pipe)
    optimizer = torch.optim.Adam(transformer.parameters(), lr=2e-3)
    for _ in range(400):
        index = torch.randint(0, len(latents), (16,))
        loss = edm_loss(denoiser, latents[index], cond[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    transformer.eval()
    real = frame_level_change_db(audio, codec.hop_length)
    changes = {}
    for envelope, token in tokens.items():
        samples = pipe(prompt_embeds=token.expand(6, -1, -1), num_inference_steps=18, guidance_scale=1.0,
                       generator=torch.Generator().manual_seed(1), output_type="pt").audios  # fmt: skip
        changes[envelope] = frame_level_change_db(samples, codec.hop_length).mean().item()
    print(f"data: fade in {real[0::2].mean():+.1f} dB, out {real[1::2].mean():+.1f} dB; samples {changes}")
    assert changes["fade_in"] > 10 and changes["fade_out"] < -10  # untrained: about -2 dB for both
