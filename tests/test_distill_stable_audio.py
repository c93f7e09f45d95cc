"""Distillation from a Stable Audio Open teacher (diffusers' `StableAudioDiTModel`: v-prediction with EDM
preconditioning, c_noise = atan(σ)·2/π, σ_data 1, T5 text plus seconds conditioning), on tiny random components built
in code and assembled into a diffusers `StableAudioPipeline`: the adapter's denoiser is the one the pipeline samples
(its scheduler's preconditioning, the conditioning the pipeline gives the DiT), its guided Euler solve ends where the
pipeline does on the same σ grid, and its d_teacher features; then `accelerate launch distill/train.py` on a saved
StableAudioPipeline folder (read as a teacher by its model_index.json), resumed once, and a learning test."""

import argparse
import inspect
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distill_data import write_dataset
from test_distill_train import audio_folder_or_manifest, distil_and_resume, launch
from tiny_models import tiny_stable_audio_pipeline as tiny_soundctm_stable_audio
from tiny_models import tiny_stable_audio_dit, tiny_text_encoder

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
from distill.teacher import StableAudioTeacher, load_teacher_pipeline, make_student, make_teacher, stable_audio_conditioning
from distill.train import push_student, student_pipeline
from soundctm import (
    AutoencoderOobleckSoundCTM,
    CTMScheduler,
    EDMHeunScheduler,
    SoundCTMPipeline,
    SoundCTMStableAudioDiTModel,
    SoundCTMStableAudioPipeline,
)

CPU = torch.device("cpu")
LATENT, FRAMES, COND = 4, 16, 12
PROMPTS = ["a dog barks", "rain falls on a roof now"]
START, END = 1.0, 5.0
LEARNING_STEPS = "300"


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
    transformer = tiny_stable_audio_dit(COND, seed, frames=FRAMES)
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


# ------------------------------------------------------------------------------------------------ the trainer
def save_stable_audio_open_folder(path) -> None:
    """A tiny `StableAudioPipeline` folder as `stabilityai/stable-audio-open-1.0` is laid out: diffusers' own classes
    (`AutoencoderOobleck`, `StableAudioDiTModel`, `CosineDPMSolverMultistepScheduler` with its default config), a T5
    encoder and tokenizer, the projection model; 44.1 kHz stereo, 8 latent frames of hop 4."""
    sa = tiny_soundctm_stable_audio(student=False)
    vae = AutoencoderOobleck(**{k: sa.vae.config[k] for k in inspect.signature(AutoencoderOobleck.__init__).parameters if k in sa.vae.config})
    vae.load_state_dict(sa.vae.state_dict())
    components = {k: v for k, v in sa.components.items() if k not in ("vae", "scheduler")}
    StableAudioPipeline(vae=vae, scheduler=CosineDPMSolverMultistepScheduler(), **components).save_pretrained(str(path))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_stable_audio")
    save_stable_audio_open_folder(root / "teacher")
    write_dataset(str(root / "wavs"))  # mono and stereo WAVs at 16-48 kHz, and a corrupt file
    return root


def test_a_stable_audio_open_folder_is_read_as_a_soundctm_teacher_pipeline(workdir):
    """The family comes from model_index.json; the teacher pipeline has Stable Audio's DiT, T5, projection model and
    the VAE's weights as they are, EDM Heun with the Cosine scheduler's σ range, σ_data, v-prediction and atan
    c_noise, and the conditioning of a diffusers StableAudioPipeline ("" = its null input)."""
    pipe = load_teacher_pipeline(str(workdir / "teacher"))
    assert isinstance(pipe, SoundCTMStableAudioPipeline) and type(pipe.transformer) is StableAudioDiTModel
    assert isinstance(pipe.vae, AutoencoderOobleckSoundCTM) and pipe.vae.config.audio_channels == 2
    assert isinstance(pipe.scheduler, EDMHeunScheduler)
    expected = dict(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, prediction_type="v_prediction", noise_conditioning="atan")
    assert {k: pipe.scheduler.config[k] for k in expected} == expected
    reference = StableAudioPipeline.from_pretrained(str(workdir / "teacher"))
    for name in ("transformer", "vae", "text_encoder", "projection_model"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    seconds = pipe.max_audio_length_in_s
    embeds, mask = pipe.encode_text(PROMPTS, CPU, return_mask=True, audio_length_in_s=seconds)
    ref_embeds, ref_mask = stable_audio_conditioning(reference, PROMPTS, 0.0, seconds, CPU)
    torch.testing.assert_close(embeds, ref_embeds, rtol=1e-6, atol=1e-6)
    assert torch.equal(mask, ref_mask)
    null, null_mask = pipe.encode_text(["", ""], CPU, return_mask=True, audio_length_in_s=seconds)
    assert torch.equal(null[:, -2:], ref_embeds[:, -2:]) and not null_mask.any()  # seconds kept for the global token


def test_a_stable_audio_open_teacher_distils_resumes_bit_exactly_and_exports_a_stereo_student(workdir):
    common = (*audio_folder_or_manifest(workdir), "--train_batch_size", "2", "--max_heun_steps", "3", "--omega_min", "3",
              "--omega_max", "7", "--shuffle_buffer_size", "1", "--checkpointing_steps", "2", "--no-random_crop")  # fmt: skip
    result = distil_and_resume(workdir, common)
    assert "mono source duplicated to both channels" in result.stderr  # the stream is stereo for this teacher
    teacher = load_file(str(workdir / "teacher" / "transformer" / "diffusion_pytorch_model.safetensors"))
    student = load_file(str(workdir / "full" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert student.keys() == teacher.keys()  # s and ω add no parameter
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained

    pipe = SoundCTMStableAudioPipeline.from_pretrained(str(workdir / "full"))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.transformer, SoundCTMStableAudioDiTModel) and pipe.is_student
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.noise_conditioning == "atan"
    assert pipe.default_guidance_scale == 7.0  # the teacher pipeline's ω (StableAudioPipeline's default CFG)
    audio = pipe("a dog barks", num_inference_steps=2, generator=gen(0)).audios
    assert audio.shape == (1, 2, pipe.latent_frames * pipe.vae.hop_length) and torch.isfinite(torch.from_numpy(audio)).all()
    with pytest.raises(ValueError, match="SoundCTMStableAudioPipeline"):
        SoundCTMPipeline.from_pretrained(str(workdir / "full"))


def test_the_exported_student_has_a_model_card_and_push_to_hub_uploads_what_hub_publish_exports(workdir):
    """The run writes the student's card (README.md); --push_to_hub uploads the folder hub.publish exports: weights,
    configs, the package's code and that card, without the run's checkpoints and logs."""
    card = (workdir / "full" / "README.md").read_text()
    assert "SoundCTM student of teacher" in card and "license: other" in card  # the tiny teacher's folder has no card
    assert "2-channel" in card and "44.1" in card
    pushed = {}

    def fake_upload(folder, repo_id, **kwargs):
        folder = Path(folder)
        pushed.update(repo_id=repo_id, card=(folder / "README.md").read_text(),
                      files={str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()})  # fmt: skip
        return "https://huggingface.co/me/sa-student/commit/0"

    args = argparse.Namespace(output_dir=str(workdir / "full"), hub_model_id="me/sa-student", hub_token=None)
    assert push_student(args, upload_fn=fake_upload).endswith("/commit/0")
    assert pushed["repo_id"] == "me/sa-student" and "me/sa-student" in pushed["card"]
    assert {"README.md", "model_index.json", "pipeline_stable_audio_soundctm.py", "transformer/stable_audio_soundctm.py"} <= pushed["files"]
    assert not any(f.startswith(("checkpoint-", "logs")) for f in pushed["files"])


def test_teachers_that_are_not_one_are_refused_by_name(workdir, tmp_path):
    with pytest.raises(ValueError, match="pretrained_teacher_model.*is a SoundCTM student"):
        load_teacher_pipeline(str(workdir / "full"))
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "AudioLDMPipeline"}')
    with pytest.raises(ValueError, match="AudioLDMPipeline.*SoundCTMPipeline, SoundCTMStableAudioPipeline, StableAudioPipeline"):
        load_teacher_pipeline(str(folder))


def test_the_one_step_stable_audio_student_approaches_the_teachers_heun_solution(workdir):
    """The learning test of the other families on Stable Audio Open: after a short distillation at a fixed ω, the
    1-step student's latents come at least 2-fold closer to the teacher's Heun solution than the initial student's
    (the teacher's own weights): 300 steps gave 0.52 -> 0.13 here."""
    omega, prompts = 5.0, [f"caption {i}" for i in range(4)] + ["a dog barks", "rain falls on a roof"]
    output = workdir / "learn"
    launch(workdir, output, "--dataset_name", str(workdir / "wavs" / "metadata.jsonl"), "--audio_column", "file_name",
           "--train_batch_size", "8", "--max_train_steps", LEARNING_STEPS, "--checkpointing_steps", "1000", "--learning_rate", "3e-3",
           "--ema_decay", "0.9", "--omega_min", str(omega), "--omega_max", str(omega), "--report_to", "none")  # fmt: skip
    teacher = load_teacher_pipeline(str(workdir / "teacher"))
    noise = torch.randn(len(prompts), *teacher.latent_shape, generator=gen(123))

    def sample(pipe, steps):
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompts, num_inference_steps=steps, guidance_scale=omega, latents=noise, output_type="latent").audios

    heun = sample(teacher, 10)
    initial = student_pipeline(teacher, make_student(teacher.transformer, teacher.latent_frames), CTMScheduler.from_config(
        SoundCTMStableAudioPipeline.from_pretrained(str(output)).scheduler.config))  # fmt: skip
    error_before = ((sample(initial, 1) - heun) ** 2).mean() / (heun**2).mean()
    error_after = ((sample(SoundCTMStableAudioPipeline.from_pretrained(str(output)), 1) - heun) ** 2).mean() / (heun**2).mean()
    print(f"1-step Stable Audio student vs 10-step Heun teacher, relative squared error: {error_before:.3f} -> {error_after:.3f}")
    assert error_after < error_before / 2, (float(error_before), float(error_after))
