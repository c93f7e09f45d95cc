"""The same pipeline properties for every model family, through the same test code: the paper's 44.1 kHz DiT
(waveform-VAE latents `(C, T)`, one pooled text token) and 16 kHz UNet (mel-VAE latents `(C, T, F)` decoded by a
vocoder, FLAN-T5 token states with their mask, σ_data 0.25, a diffusers `UNet2DConditionModel` teacher), and Stable
Audio Open's (`SoundCTMStableAudioPipeline`: stereo Oobleck latents, T5 + seconds conditioning, v-prediction with
c_noise = atan(σ)·2/π, σ in [0.3, 500], σ_data 1, a diffusers `StableAudioDiTModel` teacher).

The references are written directly from the paper's equations: every network call is made separately for the
conditional and the unconditional prompt (no padding, no batching), so they also check the pipeline's batching of
token sequences of different lengths."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableAudioDiTModel, UNet2DConditionModel
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from tiny_models import tiny_pipeline, tiny_stable_audio_pipeline, tiny_unet16k_pipeline

import soundctm
from soundctm import CTMScheduler, EDMHeunScheduler, SoundCTMPipeline, SoundCTMStableAudioPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIR = os.path.join(ROOT, "pipelines", "soundctm")
BUILDERS = {
    "dit": lambda student: tiny_pipeline(student=student, text_embedding="mean"),
    "unet16k": tiny_unet16k_pipeline,
    "stable_audio": tiny_stable_audio_pipeline,
}
CUSTOM_PIPELINE = {SoundCTMPipeline: CODE_DIR, SoundCTMStableAudioPipeline: os.path.join(CODE_DIR, "pipeline_stable_audio_soundctm.py")}


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):
    return request.param, quiet(BUILDERS[request.param](True)), quiet(BUILDERS[request.param](False))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def noise(pipe, batch, seed):
    return torch.randn(batch, *pipe.latent_shape, generator=gen(seed))


def stable_audio(pipe):
    return isinstance(pipe, SoundCTMStableAudioPipeline)


def c_noise(pipe, sigma):
    """The network's time input: Stable Audio's atan(σ)·2/π, EDM's ln(σ)/4 for the paper's families."""
    return torch.atan(sigma) * 2 / math.pi if stable_audio(pipe) else torch.log(sigma) / 4


def denoised(pipe, z, t, F):
    """g = c_skip(t)·z + c_out(t)·F; c_out is negative for Stable Audio's v-prediction."""
    d = pipe.scheduler.config.sigma_data
    sign = -1.0 if stable_audio(pipe) else 1.0
    return d**2 / (t**2 + d**2) * z + sign * t * d / torch.sqrt(t**2 + d**2) * F


def conditioning(pipe, text):
    embeds, mask = pipe.encode_text([text], torch.device("cpu"), return_mask=True)
    if stable_audio(pipe) and not pipe.is_student:
        # diffusers' StableAudioDiTModel, called as StableAudioPipeline calls it: masked tokens zeroed, the global
        # states from the last two (seconds) tokens, RoPE over the global token and the frames.
        rotary = get_1d_rotary_pos_embed(
            pipe.transformer.config.attention_head_dim // 2, pipe.latent_frames + 1, use_real=True, repeat_interleave_real=False
        )
        return {
            "encoder_hidden_states": embeds * mask[..., None],
            "global_hidden_states": torch.cat([embeds[:, -2:-1], embeds[:, -1:]], dim=2),
            "rotary_embedding": rotary,
        }
    return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}


def raw_output(pipe, z, t, text, s=None, omega=None):
    """F for one prompt: the network on c_in(t)·z, c_noise(t), its own (unpadded) text states."""
    d = pipe.scheduler.config.sigma_data
    extra = {} if s is None else {"target_timestep": c_noise(pipe, s).expand(len(z)), "guidance_scale": torch.full((len(z),), omega)}
    cond = conditioning(pipe, text)
    cond = {k: (v.expand(len(z), *v.shape[1:]) if isinstance(v, torch.Tensor) else v) for k, v in cond.items()}
    return pipe.transformer(z / torch.sqrt(t**2 + d**2), timestep=c_noise(pipe, t).expand(len(z)), **cond, **extra).sample


def ctm_sampling(pipe, prompt, steps, omega, nu, x_T):
    """Algorithm 1 with γ = 0: G = (s/t)z + (1 − s/t)g per prompt, combined as G_∅ + ν(G_c − G_∅)."""
    config = pipe.scheduler.config
    grid = torch.from_numpy(CTMScheduler(sigma_min=config.sigma_min, sigma_max=config.sigma_max).karras_sigmas(steps + 1)).float()
    z = x_T * config.sigma_max
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        jumps = []
        for text in (prompt, ""):
            g = denoised(pipe, z, t, raw_output(pipe, z, t, text, s, omega))
            jumps.append(s / t * z + (1 - s / t) * g)
        z = jumps[1] + nu * (jumps[0] - jumps[1]) if nu != 1.0 else jumps[0]
    return z


@pytest.mark.parametrize("steps, nu", [(1, 1.0), (3, 1.0), (2, 2.5)])
def test_student_sampling_follows_algorithm_1(family, steps, nu):
    _, pipe, _ = family
    x_T = noise(pipe, 1, 0)
    out = pipe("a dog barks", num_inference_steps=steps, nu=nu, guidance_scale=3.0, latents=x_T, output_type="latent").audios
    torch.testing.assert_close(out, ctm_sampling(pipe, "a dog barks", steps, 3.0, nu, x_T), rtol=1e-4, atol=1e-4)


def test_nu_one_runs_only_the_conditional_half(family):
    _, pipe, _ = family
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: batches.append(len(a[0])), with_kwargs=True)
    try:
        pipe(["a dog barks", "rain falls"], num_inference_steps=2, nu=1.0, generator=gen(0))
        assert batches == [2, 2]
        batches.clear()
        pipe(["a dog barks", "rain falls"], num_inference_steps=2, nu=2.0, generator=gen(0))
        assert batches == [4, 4]
    finally:
        hook.remove()


def test_the_same_seed_refines_the_same_noise_deterministically(family):
    _, pipe, _ = family
    for steps in (1, 4):
        a = pipe("a siren wails", num_inference_steps=steps, generator=gen(3)).audios
        b = pipe("a siren wails", num_inference_steps=steps, generator=gen(3)).audios
        np.testing.assert_array_equal(a, b)
        x_T = pipe.prepare_latents(1, torch.float32, torch.device("cpu"), gen(3))
        ref = pipe("a siren wails", num_inference_steps=steps, latents=x_T).audios
        np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, pipe("a siren wails", num_inference_steps=4, generator=gen(4)).audios)


def test_output_is_the_vae_decode_of_the_latents_at_the_models_rate_and_length(family):
    name, pipe, _ = family
    latents = pipe("a dog barks", generator=gen(1), output_type="latent").audios
    audio = pipe("a dog barks", generator=gen(1), output_type="pt").audios
    assert latents.shape == (1, *pipe.latent_shape)
    assert audio.shape == (1, 2 if name == "stable_audio" else 1, pipe.latent_frames * pipe.vae.hop_length)
    assert pipe.sampling_rate == (16000 if name == "unet16k" else 44100)
    decoded = pipe.vae.decode(pipe.vae.unstandardize(latents)).sample.clamp(-1, 1)
    torch.testing.assert_close(audio, decoded[..., : audio.shape[-1]], rtol=1e-4, atol=1e-5)
    length = min(50, audio.shape[-1] - 3)
    cropped = pipe("a dog barks", generator=gen(1), audio_length_in_s=length / pipe.sampling_rate, output_type="pt").audios
    if name == "stable_audio":
        # Stable Audio is told the length too (its seconds-end token), so the sound itself changes.
        assert cropped.shape == (*audio.shape[:2], length) and not torch.allclose(cropped, audio[..., :length])
        short = pipe("a dog barks", generator=gen(1), audio_length_in_s=length / pipe.sampling_rate, output_type="latent").audios
        full = pipe.vae.decode(pipe.vae.unstandardize(short)).sample.clamp(-1, 1)
        torch.testing.assert_close(cropped, full[..., :length], rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(cropped, audio[..., :length])


def test_teacher_samples_with_cfg_heun_through_the_same_call(family):
    name, _, teacher = family
    if name != "dit":  # diffusers' own classes, without s or ω inputs
        assert type(teacher.transformer) is {"unet16k": UNet2DConditionModel, "stable_audio": StableAudioDiTModel}[name]
    x_T = noise(teacher, 1, 2)
    out = teacher("a dog barks", num_inference_steps=4, guidance_scale=3.0, latents=x_T, output_type="latent").audios

    def D(z, t):
        c, u = (denoised(teacher, z, t, raw_output(teacher, z, t, text)) for text in ("a dog barks", ""))
        return u + 3.0 * (c - u)

    config = teacher.scheduler.config
    grid = list(torch.from_numpy(EDMHeunScheduler(sigma_min=config.sigma_min, sigma_max=config.sigma_max).karras_sigmas(4)).float())
    grid += [torch.tensor(0.0)]
    z = x_T * config.sigma_max
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        d_cur = (z - D(z, t_cur)) / t_cur
        z_next = z + (t_next - t_cur) * d_cur
        if t_next > 0:
            z_next = z + (t_next - t_cur) * (0.5 * d_cur + 0.5 * (z_next - D(z_next, t_next)) / t_next)
        z = z_next
    torch.testing.assert_close(out, z, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("student", [True, False], ids=["student", "teacher"])
def test_saved_folders_load_three_ways_and_carry_their_code(family, student, tmp_path):
    name, *pipes = family
    pipe = pipes[0] if student else pipes[1]
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    files = {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    kw = dict(num_inference_steps=2, guidance_scale=3.0, generator=gen(0))
    if student:
        kw["nu"] = 2.0
    expected = pipe("a dog barks", **kw).audios
    # The tiny random Stable Audio teacher does not denoise: its latents end near 700 (σ_max 500), where float32
    # rounding of the same computation (3e-7 relative) shows in the decoded waveform at ~2e-5.
    atol = 1e-4 if name == "stable_audio" and not student else 1e-6

    loaded = quiet(type(pipe).from_pretrained(folder))
    assert type(loaded.transformer) is type(pipe.transformer) and type(loaded.vae) is type(pipe.vae)
    np.testing.assert_allclose(loaded("a dog barks", **{**kw, "generator": gen(0)}).audios, expected, rtol=1e-4, atol=atol)
    custom = DiffusionPipeline.from_pretrained(folder, custom_pipeline=CUSTOM_PIPELINE[type(pipe)], trust_remote_code=True)
    custom = quiet(custom)
    assert type(custom).__name__ == type(pipe).__name__
    np.testing.assert_allclose(custom("a dog barks", **{**kw, "generator": gen(0)}).audios, expected, rtol=1e-4, atol=atol)

    np.save(tmp_path / "expected.npy", expected)
    call = ", ".join(f"{k}={v!r}" for k, v in kw.items() if k != "generator")
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        audio = pipe("a dog barks", {call}, generator=torch.Generator().manual_seed(0)).audios
        assert not any(m == "soundctm" or m.startswith("soundctm.") for m in sys.modules), "soundctm was imported"
        np.testing.assert_allclose(audio, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-4, atol={atol})
        print("OK", type(pipe.transformer).__name__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"OK {type(pipe.transformer).__name__}" in result.stdout


def test_the_unet_family_takes_s_and_omega_only_in_the_student():
    student, teacher = tiny_unet16k_pipeline(True), tiny_unet16k_pipeline(False)
    assert student.is_student and not teacher.is_student
    assert isinstance(student.transformer, soundctm.SoundCTMUNet2DConditionModel)
    quiet(student)
    a = student("a dog barks", guidance_scale=2.0, generator=gen(0), output_type="latent").audios
    b = student("a dog barks", guidance_scale=5.0, generator=gen(0), output_type="latent").audios
    assert not torch.allclose(a, b)
