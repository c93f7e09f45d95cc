"""Distillation from a Stable Audio Open teacher (diffusers' `StableAudioDiTModel`: v-prediction with EDM
preconditioning, c_noise = atan(σ)·2/π, σ_data 1, T5 text plus seconds conditioning), on tiny random components built
in code and assembled into a diffusers `StableAudioPipeline`: the adapter's denoiser is the one the pipeline samples
(its scheduler's preconditioning, the conditioning the pipeline gives the DiT), its guided Euler solve ends where the
pipeline does on the same σ grid, and its d_teacher features."""

import math

import pytest
import torch
from tiny_models import tiny_text_encoder

from diffusers import (
    AutoencoderOobleck,
    CosineDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
    UNet2DModel,
)
from distill.losses import append_dims
from distill.teacher import StableAudioTeacher, make_teacher, stable_audio_conditioning
from soundctm import CTMScheduler, SoundCTMStableAudioDiTModel

CPU = torch.device("cpu")
LATENT, FRAMES, COND = 4, 16, 12
PROMPTS = ["a dog barks", "rain falls on a roof now"]
START, END = 1.0, 5.0


def gen(seed):
    return torch.Generator().manual_seed(seed)


class StableAudioEulerScheduler(EDMEulerScheduler):
    """diffusers' deterministic EDM Euler sampler (no churn) with Stable Audio's noise conditioning: diffusers 0.42's
    `CosineDPMSolverMultistepScheduler` has only its SDE solver (Brownian-tree noise), so the pipeline is run with this
    one, whose preconditioning and σ grid are checked against the Cosine scheduler's below."""

    def precondition_noise(self, sigma):
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        return sigma.atan() / math.pi * 2


def tiny_stable_audio_pipeline(seed: int = 0) -> StableAudioPipeline:
    text_encoder, tokenizer, width = tiny_text_encoder("sequence", seed)
    torch.manual_seed(seed)
    transformer = StableAudioDiTModel(
        sample_size=FRAMES,
        in_channels=LATENT,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        num_key_value_attention_heads=2,
        out_channels=LATENT,
        cross_attention_dim=16,
        time_proj_dim=16,
        global_states_input_dim=2 * COND,
        cross_attention_input_dim=COND,
    )
    g = gen(seed + 1)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    vae = AutoencoderOobleck(
        encoder_hidden_size=6,
        downsampling_ratios=[1, 2],
        decoder_channels=3,
        decoder_input_channels=LATENT,
        audio_channels=2,
        channel_multiples=[2, 4],
        sampling_rate=4,  # 16 frames · hop 2 / 4 Hz = 8 s of audio
    )
    projection = StableAudioProjectionModel(text_encoder_dim=width, conditioning_dim=COND, min_value=0, max_value=16)
    scheduler = StableAudioEulerScheduler(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential",
                                          prediction_type="v_prediction")  # fmt: skip
    pipe = StableAudioPipeline(vae=vae.eval(), text_encoder=text_encoder, projection_model=projection.eval(), tokenizer=tokenizer,
                               transformer=transformer.eval(), scheduler=scheduler)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_stable_audio_pipeline()


@pytest.fixture(scope="module")
def teacher(pipe):
    sa = CosineDPMSolverMultistepScheduler()  # Stable Audio Open's scheduler, default config
    settings = StableAudioTeacher.edm_settings(sa.config)
    assert settings == dict(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, rho=7.0)
    return make_teacher(pipe.transformer, CTMScheduler(**settings))


def capture_dit_calls(pipe):
    calls = []

    def keep(module, args, kwargs):
        calls.append((args, kwargs))

    return calls, pipe.transformer.register_forward_pre_hook(keep, with_kwargs=True)


def test_the_adapter_is_the_stable_audio_schedulers_denoiser_on_the_pipelines_conditioning(pipe, teacher):
    assert isinstance(teacher, StableAudioTeacher)
    sa = CosineDPMSolverMultistepScheduler()
    calls, handle = capture_dit_calls(pipe)
    try:
        pipe(PROMPTS, audio_start_in_s=START, audio_end_in_s=END, num_inference_steps=1, guidance_scale=3.0, negative_prompt=["", ""],
             latents=torch.randn(2, LATENT, FRAMES, generator=gen(0)), output_type="latent")  # fmt: skip
    finally:
        handle.remove()
    (_, kw), = calls
    assert kw.get("attention_mask") is None and kw.get("encoder_attention_mask") is None  # the pipeline masks nothing
    # The layout: [uncond (negative prompt); cond] rows of (text padded to max_length, seconds start, seconds end).
    cond, cond_mask = stable_audio_conditioning(pipe, PROMPTS, START, END, CPU)
    uncond, uncond_mask = stable_audio_conditioning(pipe, ["", ""], START, END, CPU)
    L = pipe.tokenizer.model_max_length
    assert cond.shape == (2, L + 2, COND) and cond_mask.shape == (2, L + 2) and cond_mask[:, -2:].all()
    torch.testing.assert_close(kw["encoder_hidden_states"], torch.cat([uncond, cond]), rtol=0, atol=0)
    torch.testing.assert_close(kw["global_hidden_states"], torch.cat([uncond, cond])[:, -2:].reshape(4, 1, 2 * COND), rtol=0, atol=0)

    # D on the same inputs: the Cosine scheduler's preconditioning around the DiT, given what the pipeline gives it.
    z = 30.0 * torch.randn(2, LATENT, FRAMES, generator=gen(1))
    for s in (0.3, 2.0, 80.0, 500.0):
        sigma = torch.tensor(s)
        with torch.no_grad():
            F = pipe.transformer(sa.precondition_inputs(z, sigma), sa.precondition_noise(sigma).reshape(1), encoder_hidden_states=cond,
                                 global_hidden_states=kw["global_hidden_states"][2:], rotary_embedding=kw["rotary_embedding"]).sample  # fmt: skip
            expected = sa.precondition_outputs(z, F, sigma)
            got = teacher.denoise(z, sigma.repeat(2), cond, cond_mask)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * s)
    # c_out is negative (v-prediction): D differs from the ε-prediction reading of F.
    assert (expected - CosineDPMSolverMultistepScheduler(prediction_type="epsilon").precondition_outputs(z, F, sigma)).abs().max() > 1e-3


def test_the_test_scheduler_has_stable_audio_opens_grid_and_preconditioning(pipe):
    sa, euler = CosineDPMSolverMultistepScheduler(), pipe.scheduler
    sa.set_timesteps(6), euler.set_timesteps(6)
    torch.testing.assert_close(euler.sigmas, sa.sigmas)
    torch.testing.assert_close(euler.timesteps, sa.timesteps)
    z, F, sigma = torch.randn(3, 4), torch.randn(3, 4), torch.tensor(7.0)
    torch.testing.assert_close(euler.precondition_inputs(z, sigma), sa.precondition_inputs(z, sigma))
    torch.testing.assert_close(euler.precondition_outputs(z, F, sigma), sa.precondition_outputs(z, F, sigma))


@pytest.mark.parametrize("negative_prompt", [None, ""])
def test_a_guided_euler_solve_with_the_adapter_ends_at_the_pipelines_latents(pipe, teacher, negative_prompt):
    """N Euler steps of D(∅) + ω·(D(c) − D(∅)) from the pipeline's initial latents on its σ grid; ∅ is the pipeline's:
    the all-zero sequence with the conditional seconds as global states (no negative prompt), or the negative prompt."""
    steps, omega = 5, 3.0
    x_T = torch.randn(2, LATENT, FRAMES, generator=gen(2))
    calls, handle = capture_dit_calls(pipe)
    try:
        out = pipe(PROMPTS, audio_start_in_s=START, audio_end_in_s=END, num_inference_steps=steps, guidance_scale=omega, latents=x_T,
                   negative_prompt=None if negative_prompt is None else [negative_prompt] * 2, output_type="latent").audios  # fmt: skip
    finally:
        handle.remove()
    assert len(calls) == steps
    grid = pipe.scheduler.sigmas.clone()
    assert grid[-1] == 0 and len(grid) == steps + 1

    cond, cond_mask = stable_audio_conditioning(pipe, PROMPTS, START, END, CPU)
    if negative_prompt is None:
        uncond, uncond_mask = StableAudioTeacher.null_conditioning(cond)
        torch.testing.assert_close(calls[0][1]["encoder_hidden_states"][:2], torch.zeros_like(cond), rtol=0, atol=0)
    else:
        uncond, uncond_mask = stable_audio_conditioning(pipe, [negative_prompt] * 2, START, END, CPU)
    z = x_T * pipe.scheduler.init_noise_sigma  # the pipeline's initial latents (√(σ_max² + 1)·x_T, its convention)
    c_in = 1 / (grid[0] ** 2 + 1) ** 0.5
    torch.testing.assert_close(calls[0][0][0], torch.cat([z, z]) * c_in)
    for i in range(steps):
        sigma = grid[i].repeat(2)
        D = teacher.guided_denoise(z, sigma, cond, uncond, torch.full((2,), omega), cond_mask, uncond_mask)
        z = z + append_dims(grid[i + 1] - sigma, z.ndim) * (z - D) / append_dims(sigma, z.ndim)
    torch.testing.assert_close(z, out, rtol=1e-4, atol=1e-4)
    assert out.abs().max() > 0.1


def test_guidance_refuses_conditioning_of_different_lengths(pipe, teacher):
    cond, mask = stable_audio_conditioning(pipe, PROMPTS[:1], START, END, CPU)
    with pytest.raises(ValueError, match="one length"):
        teacher.guided_denoise(torch.randn(1, LATENT, FRAMES), torch.tensor([1.0]), cond, cond[:, 3:], torch.tensor([2.0]), mask, mask[:, 3:])


def test_block_features_are_every_transformer_block_and_differentiable(pipe, teacher):
    dit = pipe.transformer
    z = torch.randn(2, LATENT, FRAMES, generator=gen(3), requires_grad=True)
    c, m = stable_audio_conditioning(pipe, PROMPTS, START, END, CPU)
    features = teacher.block_features(z, torch.tensor([1.0, 0.4]), c, m)
    assert len(features) == len(dit.transformer_blocks) == 2
    assert all(f.shape == (2, 1 + FRAMES, dit.inner_dim) for f in features)  # the global token first
    sum(f.square().sum() for f in features).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_a_teacher_of_another_class_is_refused_naming_the_families():
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 4), norm_num_groups=2,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    with pytest.raises(ValueError, match="UNet2DModel.*SoundCTMDiTModel.*UNet2DConditionModel.*StableAudioDiTModel"):
        make_teacher(unet, CTMScheduler())


def test_a_stable_audio_student_is_refused_as_the_teacher(pipe):
    student = SoundCTMStableAudioDiTModel.from_config(pipe.transformer.config)
    with pytest.raises(ValueError, match="not a student.*SoundCTMStableAudioDiTModel"):
        make_teacher(student, CTMScheduler(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0))
