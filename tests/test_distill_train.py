"""`accelerate launch distill/train.py` on a tiny teacher and a tiny dataset written here (WAVs at other rates than
the VAE's, stereo among them, one corrupt file): a short run with its checkpoints, logs, validation audio and the
exported student; a killed run resumed to the same weights and losses as an uninterrupted one; two processes; bad
input failing before training; and a learning test (the 1-step student approaches the teacher's Heun solution)."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from test_distill_data import write_dataset
from tiny_models import tiny_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from distill.data import prepare_waveform  # noqa: E402
from distill.train import main, make_student, parse_args, student_pipeline  # noqa: E402
from soundctm import CTMScheduler, SoundCTMPipeline  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_train")
    tiny_pipeline(student=False).save_pretrained(str(root / "teacher"))
    write_dataset(str(root / "wavs"), corrupt_at=3)  # 8 clips; the corrupt file is the 4th record
    return root


def command(workdir, output_dir, *extra, num_processes=1):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes > 1:
        cmd += ["--multi_gpu", "--num_cpu_threads_per_process", "1"]  # torchrun; ACCELERATE_USE_CPU makes it gloo/CPU
        cmd += ["--main_process_port", str(free_port())]  # not the default 29500, which another run may hold
    cmd += [os.path.join("distill", "train.py"), "--pretrained_teacher_model", str(workdir / "teacher")]
    cmd += ["--output_dir", str(output_dir), "--num_timesteps", "10", "--validation_steps", "1000", *extra]
    return cmd


def free_port() -> int:
    """A TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment():
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # train.py finds `distill` by itself
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def launch(workdir, output_dir, *extra, num_processes=1, timeout=300):
    result = subprocess.run(
        command(workdir, output_dir, *extra, num_processes=num_processes),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def distil_and_resume(workdir, common):
    """4 steps in one run ("full"), and 2 steps then 2 more resumed from the checkpoint ("part"): the last checkpoint and
    the exported student are the same bit for bit. Returns the full run's result."""
    result = launch(workdir, workdir / "full", *common, "--max_train_steps", "4")
    launch(workdir, workdir / "part", *common, "--max_train_steps", "2")
    launch(workdir, workdir / "part", *common, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    for path in ("checkpoint-4/model.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(workdir / "full" / path)), load_file(str(workdir / "part" / path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path
    return result


def scalars(output_dir):
    """{tag: {step: [values]}} from every tensorboard event file of a run (a resumed run has several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for run in glob.glob(os.path.join(output_dir, "logs", "*")):
        accumulator = EventAccumulator(run, size_guidance={"scalars": 0, "audio": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                values.setdefault(tag, {}).setdefault(event.step, []).append(event.value)
        values.setdefault("audio tags", {})[run] = accumulator.Tags()["audio"]
    return values


def audio_folder_or_manifest(workdir):
    """The audiofolder layout where `datasets` can list it (torchcodec + FFmpeg), else the same folder's manifest."""
    try:
        import torchcodec  # noqa: F401

        return ("--dataset_name", str(workdir / "wavs"))
    except Exception:
        return ("--dataset_name", str(workdir / "wavs" / "metadata.jsonl"), "--audio_column", "file_name")


def test_short_run_checkpoints_logs_audio_and_exports_a_loadable_student(workdir):
    config = workdir / "short.yaml"
    config.write_text("train_batch_size: 2\nmax_train_steps: 100\nshuffle_buffer_size: 1\nuse_ema: true\n")
    output = workdir / "short"
    result = launch(
        workdir,
        output,
        "--config", str(config),
        *audio_folder_or_manifest(workdir),
        "--max_train_steps", "4",  # the flag wins over the YAML's 100
        "--checkpointing_steps", "2",
        "--checkpoints_total_limit", "1",
        "--validation_steps", "4",
        "--validation_prompts", "a dog barks",
        "--gradient_checkpointing",
        "--compute_latent_stats",
        "--latent_stats_samples", "8",
        "--no-random_crop",
    )
    # 4 steps of 2 clips: the corrupt 4th record was read once, skipped and counted, and no clip was lost.
    assert "corrupt.wav" in result.stderr
    logs = scalars(str(output))
    assert sorted(logs["train/loss"]) == [1, 2, 3, 4]
    assert logs["data/skipped_records"][4] == [1.0] and logs["data/epoch"][4] == [0.0]
    for tag in ("train/loss_ctm", "train/loss_dsm", "train/lambda_dsm", "train/grad_norm", "speed/samples_per_second", "speed/teacher_solve_s"):
        assert all(torch.isfinite(torch.tensor(v)).all() for v in logs[tag].values()), tag
    audio_tags = sum(logs["audio tags"].values(), [])
    assert "validation/1_step/0" in audio_tags and "validation/16_step/0" in audio_tags
    # checkpoints_total_limit 1: only the last state stays; it holds the EMA networks and every process's state.
    assert {"distill_state_0.pt", "model.safetensors", "transformer_ema", "transformer_target"} <= set(os.listdir(output / "checkpoint-4"))
    assert [d for d in os.listdir(output) if d.startswith("checkpoint")] == ["checkpoint-4"]
    # The exported EMA student: a SoundCTM pipeline with the CTM scheduler that generates in 1 and in N steps.
    student = SoundCTMPipeline.from_pretrained(str(output))
    student.set_progress_bar_config(disable=True)
    # --compute_latent_stats: per-channel statistics of the posterior means of the 8 clips (the first 8 records that
    # decode), computed here directly, are in the exported VAE's config.
    vae = student.vae
    clips = []
    for i in range(8):
        audio, rate = sf.read(str(workdir / "wavs" / f"clip{i}.wav"), dtype="float32", always_2d=True)
        clips.append(prepare_waveform(audio, rate, 44100, 16 * vae.hop_length, np.random.default_rng(0), random_crop=False))
    with torch.no_grad():
        z = vae.encode(torch.from_numpy(np.stack(clips))[:, None]).latent_dist.mean.double()
    np.testing.assert_allclose(vae.config.latents_mean, z.mean(dim=(0, 2)).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(vae.config.latents_std, z.std(dim=(0, 2), unbiased=False).numpy(), rtol=1e-3)
    assert json.loads((output / "latent_stats.json").read_text())["latents_mean"] == vae.config.latents_mean
    assert student.is_student and isinstance(student.scheduler, CTMScheduler)
    assert os.path.isfile(output / "pipeline.py")
    assert "export EMA 0.9999" in (output / "README.md").read_text()  # the card says which weights were exported
    for steps in (1, 4):
        audio = student("a dog barks", num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).audios
        assert audio.shape == (1, 1, 16 * student.vae.hop_length) and torch.isfinite(torch.from_numpy(audio)).all()


def test_cached_latents_train_as_encoded_ones_and_the_clock_stops_a_run(workdir):
    common = (
        "--dataset_name", str(workdir / "wavs" / "metadata.jsonl"),
        "--audio_column", "file_name",
        "--train_batch_size", "2",
        "--shuffle_buffer_size", "1",
        "--no-random_crop",  # a clip cropped at a random offset is another clip to the cache
        "--max_train_steps", "5",  # 10 clips of the 8 that decode: the second epoch's are cache hits
    )
    launch(workdir, workdir / "encoded", *common)
    cache = workdir / "latent_cache"
    launch(workdir, workdir / "cached", *common, "--latent_cache_dir", str(cache))
    a, b = scalars(str(workdir / "encoded")), scalars(str(workdir / "cached"))
    for step in range(1, 6):
        np.testing.assert_allclose(b["train/loss"][step], a["train/loss"][step], rtol=1e-4)
    assert b["data/latent_cache_misses"][5] == [8.0] and b["data/latent_cache_hits"][5] == [2.0]
    (fingerprint,) = os.listdir(cache)
    assert len(os.listdir(cache / fingerprint)) == 8

    result = launch(workdir, workdir / "clock", *common[:-1], "10000", "--max_train_minutes", "0.05")
    assert "--max_train_minutes 0.05 reached" in result.stderr
    assert 1 <= max(scalars(str(workdir / "clock"))["train/loss"]) < 10000
    assert SoundCTMPipeline.from_pretrained(str(workdir / "clock")).is_student


def test_a_killed_run_resumes_to_the_same_weights_and_loss_curve(workdir):
    common = (
        "--dataset_name", str(workdir / "wavs" / "metadata.jsonl"),  # a manifest: neither torchcodec nor FFmpeg
        "--audio_column", "file_name",
        "--train_batch_size", "2",
        "--gradient_accumulation_steps", "2",
        "--shuffle_buffer_size", "3",
        "--max_train_steps", "12",
        "--checkpointing_steps", "4",
    )
    uninterrupted = workdir / "uninterrupted"
    launch(workdir, uninterrupted, *common)

    resumed = workdir / "resumed"
    process = subprocess.Popen(
        command(workdir, resumed, *common), cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 240
    while not os.path.isdir(resumed / "checkpoint-4") and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and the training process it started
    process.wait()
    assert process.returncode == -signal.SIGKILL and not os.path.isdir(resumed / "checkpoint-12")
    launch(workdir, resumed, *common, "--resume_from_checkpoint", "latest")

    for path in ("transformer/diffusion_pytorch_model.safetensors", "checkpoint-12/model.safetensors"):
        a, b = load_file(str(uninterrupted / path)), load_file(str(resumed / path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path
    # Same batches, same draws: every value the resumed run logged (steps 5-12; the killed run's own log may not have
    # been flushed) is the uninterrupted run's.
    a, b = scalars(str(uninterrupted)), scalars(str(resumed))
    for tag in ("train/loss", "train/loss_ctm", "train/lambda_dsm", "train/heun_steps", "data/skipped_records"):
        assert set(range(5, 13)) <= set(b[tag])
        for step, values in b[tag].items():
            assert set(values) == set(a[tag][step]), (tag, step)


def test_two_processes_split_the_stream_and_train(workdir):
    output = workdir / "ddp"
    result = launch(
        workdir,
        output,
        "--dataset_name", str(workdir / "wavs" / "metadata.jsonl"),
        "--audio_column", "file_name",
        "--train_batch_size", "1",
        "--max_train_steps", "3",
        "--checkpointing_steps", "3",
        num_processes=2,
    )
    assert "Num processes: 2" in result.stderr
    states = [torch.load(output / "checkpoint-3" / f"distill_state_{r}.pt", weights_only=True) for r in range(2)]
    assert all(s["num_processes"] == 2 and s["global_step"] == 3 for s in states)
    assert states[0]["generator"].tolist() != states[1]["generator"].tolist()  # each process draws its own noise
    assert SoundCTMPipeline.from_pretrained(str(output)).is_student


# ------------------------------------------------------------------------------------------ bad input
def run_main(workdir, *extra):
    argv = ["--pretrained_teacher_model", str(workdir / "teacher"), "--dataset_name"]
    argv += [str(workdir / "wavs" / "metadata.jsonl"), "--audio_column", "file_name", "--report_to", "none"]
    argv += ["--output_dir", str(workdir / "bad"), "--max_train_steps", "1", *extra]
    return main(parse_args(argv))


def test_bad_input_fails_with_a_clear_error_before_training(workdir, tmp_path):
    student_dir = tmp_path / "student"
    tiny_pipeline(student=True).save_pretrained(str(student_dir))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    config = tmp_path / "typo.yaml"
    config.write_text("learning_rat: 0.1\n")
    cases = [
        (("--pretrained_teacher_model", str(student_dir)), "is a SoundCTM student"),
        (("--pretrained_teacher_model", str(workdir / "wavs")), "without model_index.json"),
        (("--pretrained_teacher_model", str(tmp_path / "nothing")), "neither a pipeline folder nor a Hub repo id"),
        (("--caption_column", "text"), "--caption_column 'text' is not a column"),
        (("--dataset_name", str(empty)), "--dataset_name"),
        (("--omega_min", "6", "--omega_max", "2"), r"--omega_min \(6.0\) must be <= --omega_max \(2.0\)"),
        (("--audio_length_in_s", "0.001"), "can only produce whole multiples of 8 samples"),
        (("--max_heun_steps", "10"), r"--max_heun_steps must be in \[1, 9\]"),
        (("--max_train_minutes", "0"), r"--max_train_minutes must be > 0"),
        (("--long_jump_fraction", "1.5"), r"--long_jump_fraction must be in \[0, 1\], got 1.5"),
        (("--long_jump_fraction", "0.5"), r"--long_jump_fraction needs --num_teacher_trajectories > 0"),
        (("--config", str(config)), r"unknown settings \['learning_rat'\]"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            run_main(workdir, "--num_timesteps", "10", *extra)
    assert not os.path.isdir(workdir / "bad" / "checkpoint-1")


def test_an_empty_manifest_with_a_header_is_an_empty_stream(workdir, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("file_name,caption\n")
    with pytest.raises(ValueError, match="the dataset stream is empty"):
        run_main(workdir, "--dataset_name", str(empty))


# ------------------------------------------------------------------------------------------ learning
def one_step_errors(workdir, output, *extra):
    """Distils the tiny teacher for 200 steps (N = 10, ω = 4, batch 8) into `output`; returns the 1-step student's
    relative squared error to the teacher's 10-step Heun solution at ω = 4 before and after, on noise no run drew."""
    omega, prompts = 4.0, [f"caption {i}" for i in range(4)] + ["a dog barks", "rain falls on a roof"]
    launch(
        workdir,
        output,
        "--dataset_name", str(workdir / "wavs" / "metadata.jsonl"),
        "--audio_column", "file_name",
        "--train_batch_size", "8",
        "--max_train_steps", "200",
        "--checkpointing_steps", "1000",
        "--learning_rate", "1e-3",
        "--ema_decay", "0.9",
        "--omega_min", str(omega),
        "--omega_max", str(omega),
        "--report_to", "none",
        *extra,
    )  # fmt: skip
    teacher = SoundCTMPipeline.from_pretrained(str(workdir / "teacher"))
    noise = torch.randn(len(prompts), 4, 16, generator=torch.Generator().manual_seed(123))

    def sample(pipe, steps):
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompts, num_inference_steps=steps, guidance_scale=omega, latents=noise, output_type="latent").audios

    heun = sample(teacher, 10)
    initial = student_pipeline(teacher, make_student(teacher.transformer, 16), CTMScheduler())
    error_before = ((sample(initial, 1) - heun) ** 2).mean() / (heun**2).mean()
    error_after = ((sample(SoundCTMPipeline.from_pretrained(str(output)), 1) - heun) ** 2).mean() / (heun**2).mean()
    return float(error_before), float(error_after)


def test_the_one_step_student_approaches_the_teachers_heun_solution(workdir):
    """Distilled for 200 steps, the 1-step student's error to the teacher's Heun solution falls at least 2-fold from
    the initial student's (which starts as the teacher's one-step denoiser; `pytest -s` prints both errors)."""
    error_before, error_after = one_step_errors(workdir, workdir / "learn")
    print(f"1-step student vs 10-step Heun teacher, relative squared error: {error_before:.3f} -> {error_after:.3f}")
    assert error_after < error_before / 2, (error_before, error_after)


@pytest.mark.parametrize("name", ["soundctm_dit", "soundctm_dit_paper", "cpu_short", "soundctm_unet16k", "soundctm_stable_audio_open"])
def test_bundled_configs_are_accepted_and_the_authors_settings_are_the_defaults(name):
    required = ["--pretrained_teacher_model", "owner/teacher", "--dataset_name", "data.jsonl"]
    args = parse_args(["--config", os.path.join(ROOT, "distill", "configs", f"{name}.yaml"), *required])
    defaults = parse_args(required)
    method = ("num_timesteps", "omega_min", "omega_max", "p_uncond", "ctm_distance", "dsm_weight_scale", "ema_decay", "learning_rate")
    if name == "soundctm_dit":
        assert all(getattr(args, k) == getattr(defaults, k) for k in method)
    flag = parse_args(["--config", os.path.join(ROOT, "distill", "configs", f"{name}.yaml"), *required, "--omega_max", "7"])
    assert flag.omega_max == 7.0  # a flag wins over the file
