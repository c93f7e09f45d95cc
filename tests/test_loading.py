"""The three ways a SoundCTM pipeline folder loads, all offline, and save/load round trips."""

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

import soundctm
from soundctm import SoundCTMPipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIR = os.path.join(ROOT, "pipelines", "soundctm")


@pytest.fixture(scope="module", params=["projected", "mean"])
def saved(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"pipe-{request.param}")
    pipe = tiny_pipeline(text_embedding=request.param)
    pipe.save_pretrained(folder)
    return pipe, folder


def reference_audio(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a dog barks", num_inference_steps=2, nu=2.0, generator=torch.Generator().manual_seed(0)).audios


def test_saved_folder_has_safetensors_weights_and_its_code(saved):
    _, folder = saved
    files = {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs}
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    assert {"transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors"} <= files
    assert {"pipeline.py", "transformer/transformer_soundctm_dit.py", "vae/autoencoder_gaussian_dac.py",
            "scheduler/scheduling_ctm.py"} <= files
    code = [f for f in files if f.endswith(".py")]
    assert len({(folder / f).read_text() for f in code}) == len(code)  # each code file once
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "SoundCTMPipeline"]
    assert index["transformer"] == ["transformer_soundctm_dit", "SoundCTMDiTModel"]


def test_soundctm_pipeline_from_pretrained_uses_the_installed_classes(saved):
    pipe, folder = saved
    loaded = SoundCTMPipeline.from_pretrained(folder)
    assert isinstance(loaded, SoundCTMPipeline)
    assert isinstance(loaded.transformer, soundctm.SoundCTMDiTModel)
    assert isinstance(loaded.scheduler, soundctm.CTMScheduler)
    assert loaded.config.text_embedding == pipe.config.text_embedding
    np.testing.assert_allclose(reference_audio(loaded), reference_audio(pipe), rtol=1e-4, atol=1e-6)


def test_diffusion_pipeline_with_custom_pipeline_dir(saved):
    pipe, folder = saved
    loaded = DiffusionPipeline.from_pretrained(folder, custom_pipeline=CODE_DIR, trust_remote_code=True)
    assert type(loaded).__name__ == "SoundCTMPipeline"
    np.testing.assert_allclose(reference_audio(loaded), reference_audio(pipe), rtol=1e-4, atol=1e-6)


def test_code_folder_loads_in_a_process_that_never_imports_soundctm(saved, tmp_path):
    pipe, folder = saved
    expected = tmp_path / "expected.npy"
    np.save(expected, reference_audio(pipe))
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        audio = pipe("a dog barks", num_inference_steps=2, nu=2.0, generator=torch.Generator().manual_seed(0)).audios
        assert not any(m == "soundctm" or m.startswith("soundctm.") for m in sys.modules), "soundctm was imported"
        np.testing.assert_allclose(audio, np.load({str(expected)!r}), rtol=1e-4, atol=1e-6)
        print("OK", type(pipe).__module__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK diffusers_modules" in result.stdout


def test_teacher_folder_round_trip(tmp_path):
    teacher = tiny_pipeline(student=False)
    teacher.save_pretrained(tmp_path)
    loaded = SoundCTMPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.scheduler, soundctm.EDMHeunScheduler) and not loaded.is_student
    kw = dict(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent")
    loaded.set_progress_bar_config(disable=True)
    teacher.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded("a dog barks", **kw).audios, teacher("a dog barks", **{**kw, "generator": torch.Generator().manual_seed(0)}).audios)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loading_in_half_precision(saved, dtype):
    _, folder = saved
    loaded = SoundCTMPipeline.from_pretrained(folder, dtype=dtype)
    assert loaded.transformer.dtype == dtype and loaded.vae.dtype == dtype
    assert np.isfinite(reference_audio(loaded)).all()


def test_resaving_a_loaded_pipeline_round_trips(saved, tmp_path):
    pipe, folder = saved
    loaded = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    loaded.save_pretrained(tmp_path)  # a dynamically loaded pipeline copies its own code files again
    again = SoundCTMPipeline.from_pretrained(tmp_path)
    np.testing.assert_allclose(reference_audio(again), reference_audio(pipe), rtol=1e-4, atol=1e-6)
    assert (tmp_path / "pipeline.py").read_text() == (folder / "pipeline.py").read_text()


def test_a_missing_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such pipeline folder"):
        SoundCTMPipeline.from_pretrained(tmp_path / "missing")
