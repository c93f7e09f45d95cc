"""The intensity feature f(x₀) of Appendix D.3 matches a scipy reference and is differentiable; target curves and
waveform operations (resampling, the low-pass observation, input checks, LSD) do what the pipelines rely on."""

import numpy as np
import pytest
import scipy.signal
import torch

from soundctm.intensity import (
    INTENSITY_PRESETS,
    IntensityFeature,
    SavitzkyGolay,
    intensity_loss,
    parse_curve,
    target_curve,
)
from soundctm.signal_ops import check_cutoff, log_spectral_distance, lowpass, prepare_input_audio, resample

RATE = 44100


# ------------------------------------------------------------------------------------------------ intensity
@pytest.mark.parametrize("window,polyorder", [(85, 3), (87, 2), (5, 2), (11, 0), (21, 1), (3, 2), (1, 0)])
def test_savitzky_golay_equals_scipy_savgol_filter(window, polyorder):
    x = np.random.default_rng(window).normal(size=(3, 200))
    ours = SavitzkyGolay(window, polyorder)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, scipy.signal.savgol_filter(x, window, polyorder, axis=-1), atol=1e-10)


def reference_intensity(audio: np.ndarray, frame_length=2048, hop=512, window_s=1.0, polyorder=3) -> np.ndarray:
    """numpy framing + scipy's Savitzky–Golay filter: what f(x₀) should compute."""
    padded = np.pad(audio, frame_length // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop]
    db = 10 * np.log10((frames.astype(np.float64) ** 2).mean(-1) + 1e-10)
    window = min(int(round(window_s * RATE / hop)), len(db))
    window -= 1 - window % 2
    return scipy.signal.savgol_filter(db, window, min(polyorder, window - 1))


def test_intensity_feature_matches_the_scipy_reference_with_a_one_second_window():
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    audio = (0.02 + 0.3 * t / 3) * rng.normal(size=t.size)  # loudness rising over 3 s
    feature = IntensityFeature(RATE)
    assert feature.window_length(feature.num_frames(t.size)) in (85, 87)  # ≈ 1 s of 86.1 frames/s, odd
    ours = feature(torch.from_numpy(audio).float()[None, None])[0].numpy()
    np.testing.assert_allclose(ours, reference_intensity(audio), atol=2e-3)
    assert ours[-1] - ours[0] > 10  # it does measure the rise


def test_intensity_feature_is_differentiable_even_through_silence():
    audio = torch.zeros(2, 1, RATE)
    audio[0, 0, : RATE // 2] = 0.1 * torch.randn(RATE // 2)
    audio.requires_grad_(True)
    target = torch.full((IntensityFeature(RATE).num_frames(RATE),), -20.0)
    loss = intensity_loss(target.numpy(), RATE, RATE)(audio)
    assert loss.shape == (2,)
    (grad,) = torch.autograd.grad(loss.sum(), audio)
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0


def test_short_clips_get_a_window_that_fits():
    feature = IntensityFeature(RATE, frame_length=16, hop_length=8)
    out = feature(torch.randn(1, 1, 128))
    assert out.shape == (1, 17) and torch.isfinite(out).all()


def test_presets_have_their_shapes_and_span_the_range():
    curves = {name: target_curve(name, 101, (-40.0, -10.0)).numpy() for name in INTENSITY_PRESETS}
    assert np.allclose(curves["flat"], -25.0)
    assert np.all(np.diff(curves["rising"]) > 0) and curves["rising"][[0, -1]].tolist() == [-40.0, -10.0]
    assert np.all(np.diff(curves["falling"]) < 0)
    assert curves["swell"].argmax() == 50 and curves["dip"].argmin() == 50
    assert ((np.diff(np.sign(np.diff(curves["pulses"]))) < 0).sum()) == 3  # three peaks
    assert sorted(set(curves["steps"].round(6))) == [-40.0, -25.0, -10.0]
    for curve in curves.values():
        assert curve.min() >= -40.0 - 1e-6 and curve.max() <= -10.0 + 1e-6


def test_a_users_curve_is_spread_over_the_clip_and_interpolated():
    curve = target_curve([-40, -10, -40], 5).numpy()
    np.testing.assert_allclose(curve, [-40, -25, -10, -25, -40])
    np.testing.assert_allclose(target_curve("-30, -20", 3).numpy(), [-30, -25, -20])
    assert parse_curve(" Swell ") == "swell"


@pytest.mark.parametrize(
    "curve,match",
    [
        ([-30.0, float("nan")], "NaN"),
        ([-30.0], "at least 2"),
        ([], "at least 2"),
        ([[-30, -20], [-10, -5]], "1-D"),
        ([-30, 6], "<= 0"),
        ("loud", "neither a preset"),
        ("-30,abc", "neither a preset"),
    ],
)
def test_bad_curves_are_value_errors_that_say_what_is_wrong(curve, match):
    with pytest.raises(ValueError, match=match):
        target_curve(parse_curve(curve) if isinstance(curve, str) else curve, 10)


@pytest.mark.parametrize("range_db", [(-10, -40), (-40, 5), (float("nan"), -10), ("a", "b"), (-40,)])
def test_bad_preset_ranges_are_value_errors(range_db):
    with pytest.raises(ValueError, match="range_db"):
        target_curve("rising", 10, range_db)


# ------------------------------------------------------------------------------------------------ waveforms
@pytest.mark.parametrize("orig,new", [(48000, 44100), (16000, 44100), (44100, 22050), (8000, 44100)])
def test_resampling_reproduces_a_tone_at_the_new_rate(orig, new):
    tone = np.sin(2 * np.pi * 997.0 * np.arange(orig) / orig)
    out = resample(torch.from_numpy(tone).float(), orig, new).numpy()
    assert out.shape == (new,)
    expected = np.sin(2 * np.pi * 997.0 * np.arange(new) / new)
    assert np.abs(out - expected)[100:-100].max() < 1e-3  # -60 dB
    reference = scipy.signal.resample_poly(tone, new // np.gcd(orig, new), orig // np.gcd(orig, new))
    assert np.abs(out - reference)[100:-100].max() < 5e-3


def test_resampling_down_removes_what_the_new_rate_cannot_hold():
    tone = np.sin(2 * np.pi * 23000.0 * np.arange(48000) / 48000)  # above 44.1 kHz's Nyquist: would alias
    out = resample(torch.from_numpy(tone).float(), 48000, 44100)
    assert out[500:-500].pow(2).mean().sqrt() < 3e-3


def test_lowpass_is_a_projection_onto_the_observed_band():
    x = torch.randn(2, 1, 4096)
    y = lowpass(x, 3000.0, RATE)
    torch.testing.assert_close(lowpass(y, 3000.0, RATE), y, atol=1e-5, rtol=0)
    spectrum = torch.fft.rfft(y).abs()
    freqs = torch.fft.rfftfreq(4096, 1 / RATE)
    assert spectrum[..., freqs > 3000].max() < 1e-3 and spectrum[..., freqs < 3000].min() > 0


@pytest.mark.parametrize("cutoff", [0, -5, 22050, 30000, float("nan"), "3000", True])
def test_cutoffs_outside_zero_to_nyquist_are_value_errors(cutoff):
    with pytest.raises(ValueError, match="cutoff_hz"):
        check_cutoff(cutoff, RATE)


def test_input_audio_is_converted_and_every_conversion_is_stated():
    pcm = (np.random.default_rng(0).normal(size=(2, 4800)) * 3000).astype(np.int16)  # stereo int16 at 48 kHz
    audio, notes = prepare_input_audio(pcm, 48000, RATE, max_samples=RATE)
    assert audio.shape == (1, 1, 4410) and audio.dtype == torch.float32
    assert any("int16" in n for n in notes) and any("averaged to mono" in n for n in notes)
    assert any("resampled from 48000 Hz to 44100 Hz" in n for n in notes)
    same, notes = prepare_input_audio(np.full(100, 0.5, np.float32), None, RATE)
    assert same.shape == (1, 1, 100) and notes == []


@pytest.mark.parametrize(
    "audio,rate,match",
    [
        (np.zeros(0, np.float32), None, "empty"),
        (np.zeros(1000, np.float32), None, "silent"),
        (np.array([0.1, np.nan, 0.2]), None, "NaN"),
        (np.full(RATE + 100, 0.1), None, "at most 1.00 s"),
        (np.full((RATE, 2), 0.1), None, "transpose"),
        (np.full(100, 0.1), -5, "sampling_rate"),
        (np.full((1, 1, 1, 100), 0.1), None, "shape"),
    ],
)
def test_bad_input_audio_is_a_value_error(audio, rate, match):
    with pytest.raises(ValueError, match=match):
        prepare_input_audio(audio, rate, RATE, max_samples=RATE)
    with pytest.raises(TypeError, match="audio"):
        prepare_input_audio("a.wav", None, RATE)


def test_log_spectral_distance_is_zero_for_the_same_sound_and_grows_with_the_missing_band():
    x = torch.randn(1, 1, RATE // 2)
    assert log_spectral_distance(x, x).item() == 0.0
    narrow, wide = lowpass(x, 3000.0, RATE), lowpass(x, 8000.0, RATE)
    assert log_spectral_distance(narrow, x).item() > log_spectral_distance(wide, x).item() > 0
