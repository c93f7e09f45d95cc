"""Distillation from a 16 kHz SoundCTM-UNet teacher (diffusers' `UNet2DConditionModel` on mel-VAE latents, T5 token
states with their mask), on tiny components built in code: the teacher adapter (its denoiser is the one the
teacher pipeline samples with, its d_teacher features, CFG with padded masks), λ_DSM's last-layer gradient for the
UNet's `conv_out`, and `accelerate launch distill/train.py` on a saved tiny UNet teacher, resumed once."""

import os

import pytest
import torch
from safetensors.torch import load_file
from test_distill_data import write_dataset
from test_distill_train import audio_folder_or_manifest, distil_and_resume, launch
from tiny_models import tiny_unet16k_pipeline

from distill.losses import heun_solve_cfg, last_layer_weight_grad, student_output
from distill.teacher import UNetTeacher, make_student, make_teacher, student_last_layer
from distill.train import LayerInput
from soundctm import CTMScheduler, EDMHeunScheduler, SoundCTMPipeline, SoundCTMUNet2DConditionModel

CPU = torch.device("cpu")


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def teacher_pipe():
    pipe = tiny_unet16k_pipeline(student=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def teacher(teacher_pipe):
    return make_teacher(teacher_pipe.transformer, CTMScheduler(sigma_data=0.25))


def text(pipe, prompts):
    return pipe.encode_text(prompts, CPU, return_mask=True)


def test_the_adapter_solves_the_ode_the_teacher_pipeline_samples(teacher_pipe, teacher):
    """Two Heun steps of the guided teacher on the pipeline's grid: the training solver and the pipeline agree."""
    assert isinstance(teacher, UNetTeacher)
    x_T = torch.randn(2, *teacher_pipe.latent_shape, generator=gen(0))
    seen = {}

    def keep(pipe, i, t, kwargs):
        seen[i] = kwargs["latents"].clone()
        return {}

    prompts = ["a dog barks", "rain falls on a roof now"]
    teacher_pipe(prompts, num_inference_steps=4, guidance_scale=3.0, latents=x_T, output_type="latent", callback_on_step_end=keep)
    grid = torch.from_numpy(EDMHeunScheduler(sigma_data=0.25).karras_sigmas(4)).float()
    (cond, cond_mask), (uncond, uncond_mask) = text(teacher_pipe, prompts), text(teacher_pipe, ["", ""])
    z = heun_solve_cfg(teacher, x_T * 80.0, grid, torch.zeros(2, dtype=torch.long), 2, cond, uncond, torch.full((2,), 3.0), cond_mask, uncond_mask)
    torch.testing.assert_close(z, seen[3], rtol=1e-4, atol=1e-4)  # 4 network evaluations = 2 Heun steps


def test_guidance_with_padded_token_masks_equals_separate_calls(teacher_pipe, teacher):
    z = torch.randn(1, *teacher_pipe.latent_shape, generator=gen(1))
    sigma = torch.tensor([2.0])
    (c, cm), (u, um) = text(teacher_pipe, ["a siren wails in the distance"]), text(teacher_pipe, [""])
    assert c.shape[1] != u.shape[1]
    guided = teacher.guided_denoise(z, sigma, c, u, torch.tensor([4.0]), cm, um)
    with torch.no_grad():
        d_c, d_u = teacher.denoise(z, sigma, c, cm), teacher.denoise(z, sigma, u, um)
    torch.testing.assert_close(guided, d_u + 4.0 * (d_c - d_u), rtol=1e-5, atol=1e-5)


def test_block_features_are_every_down_mid_and_up_block_and_differentiable(teacher_pipe, teacher):
    unet = teacher_pipe.transformer
    z = torch.randn(2, *teacher_pipe.latent_shape, generator=gen(2), requires_grad=True)
    c, m = text(teacher_pipe, ["a dog barks", "rain"])
    features = teacher.block_features(z, torch.tensor([1.0, 0.1]), c, m)
    assert len(features) == len(unet.down_blocks) + 1 + len(unet.up_blocks)
    assert all(f.ndim == 3 and f.shape[0] == 2 for f in features)
    assert features[-1].shape[-1] == unet.config.block_out_channels[0]  # the last up block, before conv_out
    sum(f.square().sum() for f in features).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_the_student_is_the_teachers_unet_plus_s_and_omega_and_lambda_dsm_reads_conv_out(teacher_pipe):
    torch.manual_seed(0)
    student = make_student(teacher_pipe.transformer, 8)
    assert isinstance(student, SoundCTMUNet2DConditionModel) and list(student.config.sample_size) == [8, 4]
    layer = student_last_layer(student)
    assert layer is student.conv_out
    captured = LayerInput(layer)
    z = torch.randn(2, *teacher_pipe.latent_shape, generator=gen(3))
    c, m = text(teacher_pipe, ["a dog barks", "rain"])
    sched = CTMScheduler(sigma_data=0.25)
    F = student_output(student, sched, z, torch.tensor([3.0, 0.3]), torch.tensor([1.0, 0.1]), torch.tensor([2.0, 5.0]), c, m)
    loss = (torch.sin(F) * torch.randn(F.shape, generator=gen(4))).sum()
    expected = torch.autograd.grad(loss, layer.weight, retain_graph=True)[0]
    grad = last_layer_weight_grad(layer, torch.autograd.grad(loss, F)[0], captured.value)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_unet16k")
    tiny_unet16k_pipeline(student=False).save_pretrained(str(root / "teacher"))
    write_dataset(str(root / "wavs"))
    return root


def test_a_unet_teacher_distils_resumes_bit_exactly_and_exports_a_16khz_student(workdir):
    common = (*audio_folder_or_manifest(workdir), "--train_batch_size", "2", "--max_heun_steps", "3", "--omega_min", "2", "--peak_normalize", "0.5", "--mix_augment", "1",
              "--omega_max", "5", "--shuffle_buffer_size", "1", "--checkpointing_steps", "2", "--no-random_crop")  # fmt: skip
    distil_and_resume(workdir, common)
    teacher = load_file(str(workdir / "teacher" / "transformer" / "diffusion_pytorch_model.safetensors"))
    student = load_file(str(workdir / "full" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert set(student) - set(teacher) == {f"s_time_embedding.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained

    pipe = SoundCTMPipeline.from_pretrained(str(workdir / "full"))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.transformer, SoundCTMUNet2DConditionModel) and pipe.is_student and pipe.sampling_rate == 16000
    audio = pipe("a dog barks", num_inference_steps=2, generator=gen(0)).audios
    assert audio.shape == (1, 1, pipe.latent_frames * pipe.vae.hop_length) and torch.isfinite(torch.from_numpy(audio)).all()
    assert os.path.isfile(workdir / "full" / "transformer" / "unet_soundctm.py")


def test_a_unet_student_given_as_the_teacher_is_refused_by_name(tmp_path):
    from distill.teacher import load_teacher_pipeline

    tiny_unet16k_pipeline(student=True).save_pretrained(str(tmp_path / "student"))
    with pytest.raises(ValueError, match="pretrained_teacher_model.*is a SoundCTM student"):
        load_teacher_pipeline(str(tmp_path / "student"))


def test_the_one_step_unet_student_approaches_the_teachers_heun_solution(workdir):
    """The learning test of the DiT family on the UNet family: after a short distillation at a fixed ω, the 1-step
    student's latents come at least 1.5-fold closer to the teacher's Heun solution than the initial student's (the
    tiny UNet learns slower than the tiny DiT: 300 steps gave 0.90 -> 0.51 here, 150 steps 0.90 -> 0.65)."""
    from distill.train import student_pipeline

    omega, prompts = 4.0, [f"caption {i}" for i in range(4)] + ["a dog barks", "rain falls on a roof"]
    output = workdir / "learn"
    launch(workdir, output, "--dataset_name", str(workdir / "wavs" / "metadata.jsonl"), "--audio_column", "file_name",
           "--train_batch_size", "8", "--max_train_steps", "300", "--checkpointing_steps", "1000", "--learning_rate", "3e-3",
           "--ema_decay", "0.9", "--omega_min", str(omega), "--omega_max", str(omega), "--report_to", "none")  # fmt: skip
    teacher = SoundCTMPipeline.from_pretrained(str(workdir / "teacher"))
    noise = torch.randn(len(prompts), *teacher.latent_shape, generator=gen(123))

    def sample(pipe, steps):
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompts, num_inference_steps=steps, guidance_scale=omega, latents=noise, output_type="latent").audios

    heun = sample(teacher, 10)
    initial = student_pipeline(teacher, make_student(teacher.transformer, teacher.latent_frames), CTMScheduler.from_config(teacher.scheduler.config))
    error_before = ((sample(initial, 1) - heun) ** 2).mean() / (heun**2).mean()
    error_after = ((sample(SoundCTMPipeline.from_pretrained(str(output)), 1) - heun) ** 2).mean() / (heun**2).mean()
    print(f"1-step UNet student vs 10-step Heun teacher, relative squared error: {error_before:.3f} -> {error_after:.3f}")
    assert error_after < error_before / 1.5, (float(error_before), float(error_after))
