"""The recipe's teacher stage: the data-dependent start of the conditioning path and the check that the trained
network uses its captions (recipes/procedural/train_teacher.py)."""

import numpy as np
import pytest
import torch
from tiny_models import tiny_pipeline, tiny_transformer

from recipes.procedural.probe_latent_levels import (
    ClassGaussianDenoiser,
    class_conditioning,
    denoiser_levels,
    denoising_errors,
    envelope_worth,
    latent_levels,
    sampling_levels,
)
from recipes.procedural.sounds import synthesize
from recipes.procedural.train_teacher import (
    conditioning_check,
    describe,
    edm_loss,
    envelope_check,
    envelope_noise,
    init_context_embedding,
    teacher_denoiser,
    training_sigmas,
)


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


FADES = {"a dog barks": "fade_in", "rain falls on a roof": "fade_out", "a siren wails": "steady"}


def fading_latents(count: int, frames: int = 16, channels: int = 4, seed: int = 0):
    """Zero-mean Gaussian latents whose per-frame variance fades in (x100 in amplitude), fades out or stays: like the
    demo's latents, whose class mean is ~0, so that a fade is only in the frames' variance. Returns (latents, captions,
    envelopes), the classes in turn."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.logspace(-1, 1, frames)  # amplitude 0.1 → 10 (scaled below): +40 dB, last quarter vs first ~ +30 dB
    gains = {"fade_in": ramp, "fade_out": ramp.flip(0), "steady": torch.full((frames,), 3.0)}
    captions = [list(FADES)[i % 3] for i in range(count)]
    envelopes = [FADES[c] for c in captions]
    latents = torch.stack([torch.randn(channels, frames, generator=g) * gains[e] for e in envelopes]) * 0.15
    return latents, captions, envelopes


def test_envelope_check_reads_the_fade_of_real_latents_and_reports_only_the_envelopes_asked():
    pipe = tiny_pipeline(student=False, text_embedding="mean")
    pipe.set_progress_bar_config(disable=True)
    latents, captions, envelopes = fading_latents(3)
    with torch.no_grad():
        report = envelope_check(pipe, latents, captions, envelopes, samples_per_prompt=2, num_inference_steps=4)
        only_in = envelope_check(pipe, latents[:1], captions[:1], envelopes[:1], samples_per_prompt=2, num_inference_steps=4)
    assert report["real_fade_in_db"] > 20 and report["real_fade_out_db"] < -20
    level = "samples_vs_real_level_db"
    assert set(report) == {"samples_fade_in_db", "real_fade_in_db", "samples_fade_out_db", "real_fade_out_db", level}
    assert set(only_in) == {"samples_fade_in_db", "real_fade_in_db", level}
    assert envelope_check(pipe, latents[2:], captions[2:], envelopes[2:]) == {}  # no fade named: nothing sampled
    assert abs(report["samples_fade_in_db"]) < 3  # an untrained network has no reason to fade


def test_the_dit_learns_a_caption_selected_fade_from_latents_whose_class_mean_is_zero():
    """The capability the demo teacher lacks (it makes steady sounds for fade prompts): with a zero class mean, the
    network must give the frames of a fading clip a gain that depends on their position (rotary positions relative to
    the global token) and on the caption. 600 EDM steps of the tiny network learn it (samples +27.6 / −25.6 dB, the
    data +36.7 / −33.9; other training seeds within 4 dB of that); envelope_check sees it."""
    torch.manual_seed(0)
    pipe = tiny_pipeline(student=False, text_embedding="mean")
    pipe.set_progress_bar_config(disable=True)
    transformer, denoiser = pipe.transformer, teacher_denoiser(pipe)
    latents, captions, envelopes = fading_latents(3 * 64)
    text = pipe.encode_text(captions, torch.device("cpu"))
    optimizer = torch.optim.Adam(transformer.parameters(), lr=3e-3)
    for _ in range(600):
        index = torch.randint(0, len(latents), (32,))
        loss = edm_loss(denoiser, latents[index], text[index], p_mean=-0.6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    transformer.eval()
    with torch.no_grad():
        report = envelope_check(pipe, latents[:3], captions[:3], envelopes[:3], guidance_scale=1.0, samples_per_prompt=8,
                                num_inference_steps=18)  # fmt: skip
    assert report["samples_fade_in_db"] > 10 and report["samples_fade_out_db"] < -10
    # ... because at the noise level where the sound shows through, the denoiser already gives later frames more
    levels = denoiser_levels(denoiser, latents, text, envelopes, sigmas=(1.0,), parts=4, clips_per_envelope=16)
    fade_in, fade_out = levels["fade_in"]["sigma_1"], levels["fade_out"]["sigma_1"]
    assert fade_in == sorted(fade_in) and fade_in[-1] > 20 * fade_in[0]
    assert fade_out == sorted(fade_out, reverse=True) and fade_out[0] > 20 * fade_out[-1]
    assert levels["steady"]["data"][0] > 0.1 and levels["fade_in"]["clips"] == 16


def test_latent_levels_finds_a_fade_in_the_variance_when_the_class_mean_is_zero():
    latents, captions, envelopes = fading_latents(3 * 20)
    zero_mean = latent_levels(latents, captions, envelopes, parts=4)
    same_clip = latent_levels(latents[:3].repeat(20, 1, 1), captions, envelopes, parts=4)  # every clip of a class alike
    fade_in = zero_mean["fade_in"]["power_per_part"]
    assert fade_in == sorted(fade_in) and fade_in[-1] > 100 * fade_in[0]
    assert zero_mean["fade_in"]["clips"] == 20 and set(zero_mean) == {"fade_in", "fade_out", "steady"}
    assert all(row["class_mean_share"] < 0.2 for row in zero_mean.values())
    assert all(row["class_mean_share"] == 1.0 for row in same_clip.values())


def test_envelope_noise_keeps_each_frames_level_and_drops_the_content():
    latents, _, _ = fading_latents(3, frames=16, channels=2048)
    noise = envelope_noise(latents)
    level = lambda z: z.pow(2).mean(1)  # noqa: E731
    torch.testing.assert_close(level(noise), level(latents), rtol=0.15, atol=0)
    correlation = (noise * latents).sum() / (noise.norm() * latents.norm())
    assert abs(correlation.item()) < 0.05


def test_sampling_levels_solves_the_flow_ode_to_the_data_variance_per_frame():
    from soundctm import EDMHeunScheduler

    variance = torch.logspace(-3, 0, 16)  # a 30 dB fade-in over 16 frames, and a steady class at 0.1
    generator = torch.Generator().manual_seed(0)
    fading = torch.randn(4096, 8, 16, generator=generator) * variance.sqrt()
    steady = 0.2 + torch.randn(4096, 8, 16, generator=generator) * 0.1**0.5
    classes, index = class_conditioning(["fade in"] * 4096 + ["steady"] * 4096)
    # the exact denoiser of these Gaussian latents, from their per-class statistics
    wiener = ClassGaussianDenoiser(torch.cat([fading, steady]), classes[:, 0, 0])
    noise = torch.randn(64, 8, 16, generator=generator)
    grid = EDMHeunScheduler().karras_sigmas(40).tolist() + [0.0]
    paths = {"fade_in": torch.tensor([[[float(index["fade in"])]]]), "steady": torch.tensor([[[float(index["steady"])]]])}
    report = sampling_levels(wiener, paths, noise, grid, parts=4)
    steady_final = torch.tensor(report["steady"]["final"])
    torch.testing.assert_close(steady_final, torch.full((4,), 0.2**2 + 0.1), rtol=0.15, atol=0)  # mean² + variance
    final = torch.tensor(report["fade_in"]["final"])
    expected = torch.stack([part.mean() for part in variance.tensor_split(4)])
    assert torch.allclose(final, expected, rtol=0.2, atol=2e-3), (final, expected)
    assert list(report["fade_in"]) == ["sigma_16.8", "sigma_8.03", "sigma_4.37", "sigma_2.24", "sigma_1.07", "sigma_0.47", "final"]
    at_one = report["fade_in"]["sigma_1.07"]
    assert at_one == sorted(at_one) and at_one[-1] > 10 * at_one[0]  # D already shapes the fade on the way


def test_training_sigmas_mix_edm_log_normal_with_karras_uniform_high_noise_draws():
    torch.manual_seed(0)
    edm = training_sigmas(50_000, p_mean=-0.6, p_std=1.2)
    high = training_sigmas(50_000, p_mean=-0.6, p_std=1.2, high_noise_fraction=1.0, high_noise_span=0.7)
    mixed = training_sigmas(50_000, p_mean=-0.6, p_std=1.2, high_noise_fraction=0.5)
    # log-normal: P(σ > 2) = P(z > (ln 2 + 0.6) / 1.2) ≈ 0.14
    assert abs((edm > 2).float().mean().item() - 0.14) < 0.01
    # uniform in σ^(1/7) from 80^(1/7) over 70 % of the way to 0.002^(1/7): σ in [0.318, 80], the median at u = 0.35
    assert 0.317 < high.min().item() and high.max().item() <= 80.0
    rho_median = (80 ** (1 / 7) + 0.35 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert abs(high.median().item() / rho_median - 1) < 0.03
    share_high = ((80 ** (1 / 7) - 2 ** (1 / 7)) / (80 ** (1 / 7) - 0.002 ** (1 / 7))) / 0.7
    assert abs((high > 2).float().mean().item() - share_high) < 0.01
    assert abs((mixed > 2).float().mean().item() - (0.14 + share_high) / 2) < 0.01
    with pytest.raises(ValueError, match="high_noise_fraction"):
        training_sigmas(4, high_noise_fraction=1.5)
    with pytest.raises(ValueError, match="high_noise_span"):
        training_sigmas(4, high_noise_span=0.0)


def test_envelope_worth_is_the_loss_a_denoiser_saves_by_knowing_the_envelope():
    generator = torch.Generator().manual_seed(1)  # not denoising_errors' noise seed
    fade = torch.logspace(-3, 0, 16).expand(1, 4, 16) * torch.tensor([1.0, 2.0, 0.5, 0.1])[None, :, None]
    steady = fade.mean(-1, keepdim=True).expand(1, 4, 16)
    assert all(v == 0 for v in envelope_worth(steady).values())
    worth = envelope_worth(fade, sigmas=(0.25, 1.0, 8.0))
    assert worth["sigma_8"] < worth["sigma_1"] and worth["sigma_8"] > 0
    # the same, measured: the exact denoiser against one that knows each channel's mean variance only
    latents = torch.randn(20_000, 4, 16, generator=generator) * fade.sqrt()
    classes = torch.zeros(len(latents), 1, 1)
    exact = ClassGaussianDenoiser(latents, classes[:, 0, 0])  # fitted: within 2 % of the true variance
    flat = ClassGaussianDenoiser(latents, classes[:, 0, 0])
    flat.variance = exact.variance.mean(-1, keepdim=True).expand_as(exact.variance)
    for sigma in (0.25, 1.0):
        errors = [denoising_errors(d, latents, classes, sigmas=(sigma,))[f"sigma_{sigma:g}"] for d in (flat, exact)]
        assert abs((errors[0] - errors[1]) - worth[f"sigma_{sigma:g}"]) < 0.01, (errors, worth)


def test_power_clip_weighting_makes_a_quiet_clip_weigh_as_much_as_a_loud_one_up_to_ten_times():
    class Zero:  # a denoiser that outputs nothing: each clip's error is its own power
        scheduler = teacher_denoiser(tiny_pipeline(student=False, text_embedding="mean")).scheduler

        def denoise(self, x, sigma, cond):
            return torch.zeros_like(x)

    def loss(clip, relative_power=None):
        torch.manual_seed(0)  # the same σ draw for every call
        return edm_loss(Zero(), clip[None], None, clip_power=relative_power).item()

    loud = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    quiet, silent = 0.5 * loud, 0.01 * loud  # 1/4 and 1/10 000 of the power
    assert loss(quiet) == pytest.approx(loss(loud) / 4, rel=1e-5)
    assert loss(quiet, torch.tensor([0.25])) == pytest.approx(loss(loud, torch.tensor([1.0])), rel=1e-5)
    assert loss(silent, torch.tensor([1e-4])) == pytest.approx(10 * loss(silent), rel=1e-5)  # floored at 0.1
