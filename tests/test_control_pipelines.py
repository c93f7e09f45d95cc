"""Control and editing pipelines on a tiny student: loss-based guidance (Algorithm 3) lowers the loudness-curve error,
DITTO-2 lowers its 1-step surrogate loss, bandwidth extension keeps the observed band, audio-to-audio is deterministic
and equals text-to-audio at strength 1; bad input is a ValueError naming the argument; every companion loads from a
saved folder with `custom_pipeline=<its file name>` where soundctm is not installed."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from tiny_models import tiny_pipeline

from soundctm.guidance import ctm_jump, decode_waveform, encode_waveform, karras_sigma
from soundctm.intensity import intensity_loss
from soundctm.pipeline_soundctm_audio2audio import SoundCTMAudioToAudioPipeline
from soundctm.pipeline_soundctm_bwe import SoundCTMBandwidthExtensionPipeline
from soundctm.pipeline_soundctm_guidance import SoundCTMGuidancePipeline
from soundctm.signal_ops import lowpass

RATE = 44100
SAMPLES = 128  # the tiny student's clip: 16 latent frames × hop 8
PROMPT = "a dog barks"


@pytest.fixture(scope="module")
def student():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def companion(cls, pipe):
    out = cls.from_pipe(pipe)
    out.set_progress_bar_config(disable=True)
    return out


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_loss(curve="rising"):
    """Loudness of the tiny model's 3 ms clips: 16-sample frames, and a window of 5 frames."""
    return intensity_loss(curve, SAMPLES, RATE, (-42.0, -28.0), frame_length=16, hop_length=8, smoothing_s=5 * 8 / RATE)


def curve_mse(loss, audio) -> float:
    return loss(torch.as_tensor(audio)).mean().item()


def recording(samples=SAMPLES, seed=0):
    return (np.random.default_rng(seed).normal(size=samples) * 0.05).astype(np.float32)


# ------------------------------------------------------------------------------------------------ guidance
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_without_a_loss_or_with_every_control_off_it_is_the_base_pipeline(student, gamma):
    pipe = companion(SoundCTMGuidancePipeline, student)
    args = dict(num_inference_steps=4, nu=2.0, gamma=gamma)
    base = student(PROMPT, generator=seeded(), **args).audios
    np.testing.assert_array_equal(pipe(PROMPT, generator=seeded(), **args).audios, base)
    off = pipe(PROMPT, generator=seeded(), loss_fn=tiny_loss(), rho=0.0, noise_optimization_steps=0, **args).audios
    np.testing.assert_array_equal(off, base)


@pytest.mark.parametrize("gamma", [0.0, 0.5])
@pytest.mark.parametrize("curve", ["rising", "swell"])
def test_loss_based_guidance_brings_the_loudness_closer_to_the_target_curve(student, gamma, curve):
    pipe = companion(SoundCTMGuidancePipeline, student)
    loss = tiny_loss(curve)
    args = dict(num_inference_steps=8, gamma=gamma, loss_fn=loss)
    default = curve_mse(loss, pipe(PROMPT, generator=seeded(), rho=0.0, **args).audios)
    guided = curve_mse(loss, pipe(PROMPT, generator=seeded(), rho=1.0, **args).audios)
    assert guided < 0.95 * default, (default, guided)


def test_an_intensity_curve_is_guidance_by_the_intensity_loss(student):
    pipe = companion(SoundCTMGuidancePipeline, student)
    args = dict(num_inference_steps=3, rho=0.5)
    by_curve = pipe(PROMPT, generator=seeded(), intensity_curve=[-40, -30, -35], intensity_range_db=(-50, -10), **args)
    by_loss = pipe(PROMPT, generator=seeded(), loss_fn=intensity_loss([-40, -30, -35], SAMPLES, RATE), **args)
    np.testing.assert_array_equal(by_curve.audios, by_loss.audios)
    plain = pipe(PROMPT, generator=seeded(), num_inference_steps=3).audios
    assert not np.array_equal(by_curve.audios, plain)


def test_ditto2_noise_optimisation_lowers_the_one_step_loss_it_optimises(student):
    pipe = companion(SoundCTMGuidancePipeline, student)
    loss = tiny_loss()
    embeds, _ = pipe.encode_prompt(PROMPT, torch.device("cpu"))
    noise = pipe.prepare_latents(1, torch.float32, torch.device("cpu"), seeded())
    optimised = pipe.optimize_initial_noise(noise, embeds, loss, num_iterations=8, learning_rate=20.0)

    @torch.no_grad()
    def one_step_loss(unit_noise):
        clean = ctm_jump(pipe, unit_noise * 80.0, 80.0, 0.002, embeds, 5.0)
        return curve_mse(loss, decode_waveform(pipe, clean, SAMPLES))

    assert optimised.shape == noise.shape and not torch.equal(optimised, noise)
    assert one_step_loss(optimised) < one_step_loss(noise)
    # Through __call__: the optimised noise is then sampled with the usual steps.
    out = pipe(PROMPT, generator=seeded(), num_inference_steps=2, loss_fn=loss, rho=0.0, noise_optimization_steps=2,
               noise_learning_rate=20.0).audios  # fmt: skip
    assert not np.array_equal(out, student(PROMPT, generator=seeded(), num_inference_steps=2).audios)


def test_a_users_step_callback_still_runs_and_sees_the_guided_latents(student):
    pipe = companion(SoundCTMGuidancePipeline, student)
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, sorted(kwargs)))
        return {"latents": kwargs["latents"]}

    pipe(PROMPT, generator=seeded(), num_inference_steps=3, loss_fn=tiny_loss(), rho=0.5,
         callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])  # fmt: skip
    assert seen == [(0, ["latents"]), (1, ["latents"]), (2, ["latents"])]


def test_guidance_rejects_bad_control_arguments_by_name(student):
    pipe = companion(SoundCTMGuidancePipeline, student)
    for kwargs, match in [
        (dict(intensity_curve="rising", loss_fn=tiny_loss()), "at most one"),
        (dict(loss_fn="mse"), "callable"),
        (dict(loss_fn=tiny_loss(), rho=-1.0), "rho"),
        (dict(loss_fn=tiny_loss(), rho=float("nan")), "rho"),
        (dict(loss_fn=tiny_loss(), noise_optimization_steps=-3), "noise_optimization_steps"),
        (dict(loss_fn=tiny_loss(), noise_optimization_steps=5, noise_learning_rate=0.0), "noise_learning_rate"),
        (dict(intensity_curve=[-30.0, float("nan")]), "NaN"),
        (dict(intensity_curve=[-30.0]), "at least 2"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            pipe(PROMPT, num_inference_steps=2, **kwargs)
    with pytest.raises(ValueError, match="student"):
        companion(SoundCTMGuidancePipeline, tiny_pipeline(student=False))(PROMPT, intensity_curve="rising")


# ------------------------------------------------------------------------------------------------ bandwidth extension
@pytest.mark.parametrize("steps", [4, 8])
def test_bandwidth_extension_keeps_the_observed_band_and_generates_above_it(student, steps):
    pipe = companion(SoundCTMBandwidthExtensionPipeline, student)
    x = torch.from_numpy(recording())
    out = pipe(x, num_inference_steps=steps, cutoff_hz=3000.0, generator=seeded(), output_type="pt").audios[0, 0]
    assert out.shape == x.shape and out.abs().max() < 1.0  # no clipping, so the projection is exact
    torch.testing.assert_close(lowpass(out, 3000.0, RATE), lowpass(x, 3000.0, RATE), atol=1e-6, rtol=0)
    above = out - lowpass(out, 3000.0, RATE)
    assert above.pow(2).mean() > 0  # the band above the cut-off is generated, not left empty


def test_bandwidth_extension_is_seeded_and_takes_short_clips_other_rates_and_captions(student):
    pipe = companion(SoundCTMBandwidthExtensionPipeline, student)
    short = recording(100)
    a = pipe(short, generator=seeded(), prompt="a dog barks").audios
    b = pipe(short, generator=seeded(), prompt="a dog barks").audios
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 1, 100)
    at_48k = pipe(recording(96, seed=1), sampling_rate=48000, generator=seeded()).audios
    assert at_48k.shape == (1, 1, 89)  # ceil(96 · 44100 / 48000)
    batch = pipe(np.stack([recording(seed=s)[None] for s in range(2)]), prompt=["a dog barks", "rain"], generator=seeded())
    assert batch.audios.shape == (2, 1, SAMPLES)


def test_bandwidth_extension_rejects_bad_input_by_name(student):
    pipe = companion(SoundCTMBandwidthExtensionPipeline, student)
    x = recording()
    for kwargs, match in [
        (dict(cutoff_hz=0.0), "cutoff_hz"),
        (dict(cutoff_hz=22050.0), "cutoff_hz"),
        (dict(cutoff_hz=3000.0, sampling_rate=4000), "cutoff_hz.*2000"),  # above the input's own Nyquist
        (dict(output_type="latent"), "output_type"),
        (dict(prompt=["a", "b"]), "one per clip"),
        (dict(prompt=7), "prompt"),
        (dict(audio=np.zeros(SAMPLES, np.float32)), "silent"),
        (dict(audio=np.zeros(0, np.float32)), "empty"),
        (dict(audio=recording(SAMPLES + 100)), "at most"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            pipe(**{"audio": x, **kwargs})
    with pytest.raises(ValueError, match="student"):
        companion(SoundCTMBandwidthExtensionPipeline, tiny_pipeline(student=False))(x)


# ------------------------------------------------------------------------------------------------ audio-to-audio
@pytest.mark.parametrize("gamma,nu", [(0.0, 1.0), (0.5, 2.0)])
def test_strength_one_is_text_to_audio(student, gamma, nu):
    pipe = companion(SoundCTMAudioToAudioPipeline, student)
    args = dict(num_inference_steps=3, gamma=gamma, nu=nu)
    text_to_audio = student(PROMPT, generator=seeded(3), **args).audios
    out = pipe(PROMPT, audio=recording(), strength=1.0, generator=seeded(3), **args).audios
    np.testing.assert_array_equal(out, text_to_audio)


def test_audio_to_audio_is_deterministic_for_a_seed_at_gamma_zero(student):
    pipe = companion(SoundCTMAudioToAudioPipeline, student)
    args = dict(audio=recording(), strength=0.6, num_inference_steps=4)
    a = pipe(PROMPT, generator=seeded(1), **args).audios
    np.testing.assert_array_equal(a, pipe(PROMPT, generator=seeded(1), **args).audios)
    assert not np.array_equal(a, pipe(PROMPT, generator=seeded(2), **args).audios)


def test_strength_sets_where_the_jumps_start_and_low_strength_keeps_the_input():
    # A student whose network output F is 0: its denoiser is c_skip(t)·z, nearly the identity at small t. Then the
    # result is the encoded input plus the noise added at σ_start, which strength must make small.
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for param in pipe.transformer.proj_out.parameters():
            param.zero_()
    pipe = companion(SoundCTMAudioToAudioPipeline, pipe)
    x = recording()
    with torch.no_grad():
        clean = encode_waveform(pipe, torch.from_numpy(x)[None, None])
    starts, distances = [], []

    def first_sigma(p, i, t, kwargs):
        if i == 0:
            starts.append(float(p.scheduler.sigmas[0]))
        return {}

    for strength in (0.05, 0.2, 0.35, 1.0):
        latents = pipe(PROMPT, audio=x, strength=strength, num_inference_steps=2, generator=seeded(),
                       output_type="latent", callback_on_step_end=first_sigma).audios  # fmt: skip
        distances.append((latents - clean).pow(2).mean().sqrt().item())
    np.testing.assert_allclose(starts, [karras_sigma(pipe.scheduler, s) for s in (0.05, 0.2, 0.35, 1.0)], rtol=1e-6)
    assert starts == sorted(starts) and starts[-1] == pytest.approx(80.0)
    assert distances[:3] == sorted(distances[:3]) and distances[0] < 0.02, distances


def test_audio_to_audio_with_a_teacher_is_sdedit_and_strength_one_is_its_text_to_audio():
    teacher = tiny_pipeline(student=False)
    teacher.set_progress_bar_config(disable=True)
    pipe = companion(SoundCTMAudioToAudioPipeline, teacher)
    out = pipe(PROMPT, audio=recording(), strength=1.0, num_inference_steps=2, generator=seeded()).audios
    np.testing.assert_array_equal(out, teacher(PROMPT, num_inference_steps=2, generator=seeded()).audios)
    partial = pipe(PROMPT, audio=recording(), strength=0.3, num_inference_steps=2, generator=seeded()).audios
    assert partial.shape == (1, 1, SAMPLES) and np.isfinite(partial).all()
    assert pipe.scheduler is teacher.scheduler  # the temporary grid does not stay behind


def test_audio_to_audio_rejects_bad_input_by_name(student):
    pipe = companion(SoundCTMAudioToAudioPipeline, student)
    x = recording()
    for kwargs, match in [
        (dict(strength=0.0), "strength"),
        (dict(strength=1.5), "strength"),
        (dict(strength=float("nan")), "strength"),
        (dict(strength=True), "strength"),
        (dict(audio=None), "audio"),
        (dict(audio=np.zeros(0, np.float32)), "empty"),
        (dict(audio=np.zeros(SAMPLES, np.float32)), "silent"),
        (dict(audio=recording(SAMPLES * 3)), "at most"),
        (dict(audio=np.stack([x[None]] * 3)), "3 clips for 1 prompts"),
    ]:
        with pytest.raises(ValueError, match=match):
            pipe(PROMPT, **{"audio": x, **kwargs})


# ------------------------------------------------------------------------------------------------ loading
def test_companions_load_from_a_saved_folder_where_soundctm_is_not_installed(student, tmp_path):
    folder = tmp_path / "student"
    student.save_pretrained(folder)
    x = recording()
    expected = {
        "pipeline_soundctm_guidance": companion(SoundCTMGuidancePipeline, student)(
            PROMPT, num_inference_steps=2, intensity_curve="rising", rho=0.5, generator=seeded()).audios,
        "pipeline_soundctm_bwe": companion(SoundCTMBandwidthExtensionPipeline, student)(
            x, num_inference_steps=2, generator=seeded()).audios,
        "pipeline_soundctm_audio2audio": companion(SoundCTMAudioToAudioPipeline, student)(
            PROMPT, audio=x, strength=0.5, num_inference_steps=2, generator=seeded()).audios,
    }  # fmt: skip
    np.save(tmp_path / "x.npy", x)
    for name, audio in expected.items():
        np.save(tmp_path / f"{name}.npy", audio)
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        folder, x = {str(folder)!r}, np.load({str(tmp_path / "x.npy")!r})
        calls = {{
            "pipeline_soundctm_guidance": lambda p, g: p("{PROMPT}", num_inference_steps=2, intensity_curve="rising",
                                                         rho=0.5, generator=g),
            "pipeline_soundctm_bwe": lambda p, g: p(x, num_inference_steps=2, generator=g),
            "pipeline_soundctm_audio2audio": lambda p, g: p("{PROMPT}", audio=x, strength=0.5, num_inference_steps=2,
                                                            generator=g),
        }}
        for name, call in calls.items():
            pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=name, trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            audio = call(pipe, torch.Generator().manual_seed(0)).audios
            np.testing.assert_allclose(audio, np.load({str(tmp_path)!r} + f"/{{name}}.npy"), rtol=1e-4, atol=1e-6)
            print(name, type(pipe).__name__)
        assert not any(m == "soundctm" or m.startswith("soundctm.") for m in sys.modules), "soundctm was imported"
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pipeline_soundctm_bwe SoundCTMBandwidthExtensionPipeline" in result.stdout


def test_a_saved_companion_loads_back_as_itself(student, tmp_path):
    pipe = companion(SoundCTMAudioToAudioPipeline, student)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_soundctm_audio2audio", "SoundCTMAudioToAudioPipeline"]
    assert {"pipeline.py", "guidance.py", "signal_ops.py"} <= set(os.listdir(tmp_path))
    loaded = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "SoundCTMAudioToAudioPipeline"
    installed = SoundCTMAudioToAudioPipeline.from_pretrained(tmp_path)
    assert type(installed) is SoundCTMAudioToAudioPipeline
