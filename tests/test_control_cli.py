"""`soundctm generate` with --intensity-curve, --init-audio/--strength and --bandwidth-extend/--cutoff: files are
written, the options reach the pipelines, and bad input is an error message (exit code 2), never a traceback."""

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import tiny_pipeline

from soundctm import cli
from soundctm.pipeline_soundctm_audio2audio import SoundCTMAudioToAudioPipeline
from soundctm.signal_ops import lowpass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("control-cli-model")
    tiny_pipeline().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A stereo 16-bit WAV at 48 kHz: the CLI must mix it to mono and resample it, not refuse it."""
    path = tmp_path_factory.mktemp("control-cli-audio") / "in48k.wav"
    sf.write(path, np.random.default_rng(0).normal(size=(110, 2)) * 0.05, 48000, subtype="PCM_16")
    return str(path)


def generate(model_dir, *args):
    return cli.main(["generate", *args, "--model", model_dir, "-q"])


def test_intensity_curve_presets_and_values_write_wavs_and_ditto2_is_a_method(model_dir, tmp_path):
    for name, curve in (("preset", "swell"), ("values", "-40,-20,-30")):
        assert generate(model_dir, "a dog barks", f"--intensity-curve={curve}", "--steps", "2", "-o", str(tmp_path / f"{name}.wav")) == 0
    rates = {sf.info(tmp_path / f"{n}.wav").samplerate for n in ("preset", "values")}
    assert rates == {44100}
    assert generate(model_dir, "a dog barks", "--intensity-curve", "rising", "--intensity-method", "ditto2", "--ditto-iterations",
                    "3", "--steps", "1", "-o", str(tmp_path / "ditto.wav")) == 0  # fmt: skip
    assert (tmp_path / "ditto.wav").exists()


def test_init_audio_is_resampled_and_refined_as_the_pipeline_does(model_dir, recording, tmp_path, monkeypatch):
    out = tmp_path / "a2a.wav"
    assert generate(model_dir, "a dog barks", "--init-audio", recording, "--strength", "0.4", "--steps", "2", "--seed", "3",
                    "-o", str(out)) == 0  # fmt: skip
    written, rate = sf.read(out)
    assert rate == 44100 and written.shape == (102,)  # ceil(110 · 44100 / 48000) samples, mono
    audio, file_rate = sf.read(recording, always_2d=True)
    pipe = SoundCTMAudioToAudioPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a dog barks", audio=audio.T.astype(np.float32), sampling_rate=file_rate, strength=0.4,
                    num_inference_steps=2, generator=[torch.Generator().manual_seed(3)]).audios[0, 0]  # fmt: skip
    np.testing.assert_allclose(written, np.round(np.clip(expected, -1, 1) * 32767) / 32768, atol=2 / 32768)


def test_bandwidth_extend_needs_no_prompt_and_keeps_the_observed_band(model_dir, tmp_path):
    source = tmp_path / "full.wav"
    sf.write(source, np.random.default_rng(1).normal(size=128) * 0.05, 44100, subtype="FLOAT")
    out = tmp_path / "bwe.wav"
    assert generate(model_dir, "--bandwidth-extend", str(source), "--cutoff", "3000", "-o", str(out)) == 0
    written = torch.from_numpy(sf.read(out, dtype="float32")[0])
    original = torch.from_numpy(sf.read(source, dtype="float32")[0])
    # 16-bit output: the observed band is kept up to the quantisation step.
    assert (lowpass(written, 3000, 44100) - lowpass(original, 3000, 44100)).abs().max() < 4 / 32768


@pytest.mark.parametrize(
    "args,message",
    [
        (["a dog", "--intensity-curve", "loud"], "neither a preset"),
        (["a dog", "--intensity-curve=-30,nan"], "NaN"),
        (["a dog", "--intensity-curve=-30"], "at least 2"),
        (["a dog", "--intensity-curve", "rising", "--intensity-range", "-10", "-40"], "range_db"),
        (["a dog", "--init-audio", "RECORDING", "--strength", "0"], "strength"),
        (["a dog", "--init-audio", "RECORDING", "--strength", "1.5"], "strength"),
        (["a dog", "--init-audio", "MISSING"], "cannot read"),
        (["--bandwidth-extend", "RECORDING", "--cutoff", "30000"], "cutoff_hz"),
        (["--bandwidth-extend", "RECORDING", "--cutoff", "0"], "cutoff_hz"),
        (["--intensity-curve", "rising"], "prompt is required"),
        (["a dog", "--init-audio", "RECORDING", "--intensity-curve", "flat"], "one of"),
    ],
)
def test_bad_control_input_is_an_error_message(model_dir, recording, tmp_path, capsys, args, message):
    args = [recording if a == "RECORDING" else str(tmp_path / "missing.wav") if a == "MISSING" else a for a in args]
    assert cli.main(["generate", *args, "--model", model_dir, "-o", str(tmp_path / "x.wav")]) == 2
    assert message in capsys.readouterr().err


def test_silent_or_empty_input_files_are_refused_with_a_reason(model_dir, tmp_path, capsys):
    silent, empty = tmp_path / "silent.wav", tmp_path / "empty.wav"
    sf.write(silent, np.zeros(100), 44100)
    sf.write(empty, np.zeros(0), 44100)
    for path, reason in ((silent, "silent"), (empty, "empty")):
        assert cli.main(["generate", "a dog", "--init-audio", str(path), "--model", model_dir, "-o", str(tmp_path / "x.wav")]) == 2
        assert reason in capsys.readouterr().err
