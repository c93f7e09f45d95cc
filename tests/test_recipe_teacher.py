"""The recipe's teacher stage: the data-dependent start of the conditioning path and the check that the trained
network uses its captions (recipes/procedural/train_teacher.py)."""

import numpy as np
import torch
from tiny_models import tiny_pipeline, tiny_transformer

from recipes.procedural.sounds import synthesize
from recipes.procedural.train_teacher import conditioning_check, describe, envelope_check, init_context_embedding


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


def test_envelope_check_reads_the_fade_of_real_latents_and_reports_only_the_envelopes_asked():
    pipe = tiny_pipeline(student=False, text_embedding="mean")
    ramp = torch.logspace(-1, 1, 16)  # amplitude x100 over the clip: +40 dB, last quarter vs first ~ +30 dB
    noise = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    latents = torch.stack([noise[0] * ramp, noise[1] * ramp.flip(0), noise[2]])
    with torch.no_grad():
        report = envelope_check(pipe, latents, ["a dog barks", "rain falls on a roof", "a siren wails"],
                                ["fade_in", "fade_out", "steady"])  # fmt: skip
        only_in = envelope_check(pipe, latents[:1], ["a dog barks"], ["fade_in"])
    assert report["real_fade_in_db"] > 20 and report["real_fade_out_db"] < -20
    assert set(report) == {"denoiser_fade_in_db", "real_fade_in_db", "denoiser_fade_out_db", "real_fade_out_db"}
    assert set(only_in) == {"denoiser_fade_in_db", "real_fade_in_db"}
