"""`soundctm generate` writes 44.1 kHz WAV files, reproducibly, and reports bad input as an error message."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from tiny_models import tiny_pipeline

from soundctm import cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-model")
    tiny_pipeline().save_pretrained(folder)
    return str(folder)


def test_generate_writes_a_44k_wav(model_dir, tmp_path):
    out = tmp_path / "dog.wav"
    assert cli.main(["generate", "a dog barks", "--steps", "1", "--seed", "0", "-o", str(out), "--model", model_dir, "-q"]) == 0
    audio, rate = sf.read(out)
    info = sf.info(out)
    assert rate == 44100 and info.subtype == "PCM_16" and audio.shape == (128,)


def test_same_seed_same_file_and_options_are_passed_through(model_dir, tmp_path):
    args = ["generate", "a dog barks", "--steps", "4", "--nu", "2", "--gamma", "0.5", "--omega", "3", "--model", model_dir, "-q"]
    cli.main(args + ["--seed", "5", "-o", str(tmp_path / "a.wav")])
    cli.main(args + ["--seed", "5", "-o", str(tmp_path / "b.wav")])
    cli.main(args + ["--seed", "6", "-o", str(tmp_path / "c.wav")])
    a, b, c = (sf.read(tmp_path / f"{n}.wav")[0] for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    cli.main(args + ["--seed", "5", "--duration", str(64 / 44100), "-o", str(tmp_path / "short.wav")])
    np.testing.assert_array_equal(sf.read(tmp_path / "short.wav")[0], a[:64])


def test_several_waveforms_get_numbered_files(model_dir, tmp_path):
    cli.main(["generate", "a dog barks", "--num-waveforms", "3", "-o", str(tmp_path / "x.wav"), "--model", model_dir, "-q"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_0.wav", "x_1.wav", "x_2.wav"]


def test_bad_input_is_an_error_message_not_a_traceback(model_dir, tmp_path, capsys):
    code = cli.main(["generate", "a dog barks", "--gamma", "1.5", "--model", model_dir, "-o", str(tmp_path / "x.wav")])
    assert code == 2 and "gamma" in capsys.readouterr().err
    code = cli.main(["generate", "a dog barks", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "x.wav")])
    assert code == 2 and "error" in capsys.readouterr().err


def test_no_model_anywhere_says_how_to_give_one(monkeypatch, tmp_path):
    monkeypatch.delenv(cli.ENV_MODEL, raising=False)
    monkeypatch.setattr(cli, "bundled_model_dir", lambda: tmp_path / "nothing")
    with pytest.raises(ValueError, match="--model"):
        cli.resolve_model(None)
    monkeypatch.setenv(cli.ENV_MODEL, "org/model")
    assert cli.resolve_model(None) == "org/model"


def test_console_script_is_installed(model_dir, tmp_path):
    exe = shutil.which("soundctm")
    assert exe, "the soundctm console script is not installed"
    result = subprocess.run([exe, "generate", "a dog barks", "--model", model_dir, "-o", str(tmp_path / "x.wav")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (tmp_path / "x.wav").exists()


def test_quiet_prints_nothing_not_even_the_loading_bars(model_dir, tmp_path):
    result = subprocess.run([shutil.which("soundctm"), "generate", "a dog barks", "--model", model_dir, "-o",
                             str(tmp_path / "x.wav"), "-q"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "Loading" not in result.stderr and "it/s" not in result.stderr


def test_generate_with_a_16khz_unet_student_writes_a_16k_wav(tmp_path):
    from tiny_models import tiny_unet16k_pipeline

    pipe = tiny_unet16k_pipeline(student=True)
    pipe.save_pretrained(tmp_path / "unet16k")
    out = tmp_path / "dog16k.wav"
    args = ["generate", "a dog barks", "--steps", "2", "--seed", "0", "-o", str(out), "--model", str(tmp_path / "unet16k"), "-q"]
    assert cli.main(args) == 0
    audio, rate = sf.read(out)
    assert rate == 16000 and audio.shape == (pipe.latent_frames * pipe.vae.hop_length,)


# ------------------------------------------------------------------------------------------------ Stable Audio Open
@pytest.fixture(scope="module")
def stable_audio_dir(tmp_path_factory):
    from tiny_models import tiny_stable_audio_pipeline

    folder = tmp_path_factory.mktemp("cli-stable-audio") / "student"
    tiny_stable_audio_pipeline(student=True).save_pretrained(folder)
    return str(folder)


def test_generate_with_a_stable_audio_student_writes_the_pipelines_stereo_sound(stable_audio_dir, tmp_path):
    import torch

    from soundctm import SoundCTMStableAudioPipeline

    assert cli.pipeline_class(stable_audio_dir) is SoundCTMStableAudioPipeline
    out = tmp_path / "dog.wav"
    args = ["generate", "a dog barks", "--steps", "2", "--nu", "2", "--seed", "3", "--model", stable_audio_dir, "-q"]
    assert cli.main(args + ["-o", str(out)]) == 0
    written, rate = sf.read(out, dtype="int16")
    assert rate == 44100 and sf.info(out).channels == 2 and written.shape == (32, 2)
    pipe = SoundCTMStableAudioPipeline.from_pretrained(stable_audio_dir)
    pipe.set_progress_bar_config(disable=True)
    audio = pipe("a dog barks", num_inference_steps=2, nu=2.0, generator=torch.Generator().manual_seed(3)).audios[0]
    assert audio.shape == (2, 32)  # (channels, samples): the file holds it transposed, channel by channel
    expected = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).T
    assert np.abs(written.astype(int) - expected).max() <= 1
    # --duration is the length generated (it also sets Stable Audio's seconds conditioning); several waveforms
    assert cli.main(args + ["--duration", str(16 / 44100), "--num-waveforms", "2", "-o", str(tmp_path / "short.wav")]) == 0
    for name in ("short_0.wav", "short_1.wav"):
        assert sf.read(tmp_path / name)[0].shape == (16, 2)


@pytest.mark.parametrize("flags", [["--intensity-curve", "swell"], ["--init-audio", "in.wav"], ["--bandwidth-extend", "in.wav"]],
                         ids=["intensity", "audio2audio", "bandwidth"])
def test_control_flags_on_a_stable_audio_model_are_an_error_naming_flag_and_model(stable_audio_dir, flags, tmp_path,
                                                                                   monkeypatch, capsys):
    sf.write(tmp_path / "in.wav", np.zeros((64, 2)), 44100)
    flags = [str(tmp_path / f) if f.endswith(".wav") else f for f in flags]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the flag was refused")

    monkeypatch.setattr(cli, "load_pipeline", no_loading)
    out = tmp_path / "x.wav"
    code = cli.main(["generate", "a dog barks", *flags, "--model", stable_audio_dir, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{flags[0]} is not available for --model {stable_audio_dir}" in err and "Stable Audio Open" in err
    assert not out.exists()
