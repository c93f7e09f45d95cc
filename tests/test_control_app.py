"""The app's control and editing tabs (app_control.py): each handler returns what its outputs show — the target
against the achieved loudness curve, spectrograms of input and output — and turns bad input into a gr.Error that the
page shows; the tabs add three API endpoints to a Blocks."""

import os
import sys

import gradio as gr
import numpy as np
import pytest
from tiny_models import tiny_pipeline, tiny_text_encoder, tiny_transformer, tiny_vae

from soundctm import CTMScheduler, SoundCTMPipeline

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import app_control  # noqa: E402

GUIDANCE = "Loss-based guidance (Algorithm 3)"


LENGTH = 640 * 8  # a tiny student making 5120 samples: 11 loudness frames of 512 samples


@pytest.fixture(scope="module")
def tabs():
    text_encoder, tokenizer, width = tiny_text_encoder("projected")
    pipe = SoundCTMPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                            transformer=tiny_transformer(width, sample_size=640), scheduler=CTMScheduler())  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return app_control.ControlTabs(lambda: pipe, ditto_iterations=2)


def upload(samples=120, rate=48000, seed=0):
    """What gr.Audio(type="numpy") hands a handler: (rate, int16 (samples, channels))."""
    return rate, (np.random.default_rng(seed).normal(size=(samples, 2)) * 2000).astype(np.int16)


def test_intensity_plots_target_and_achieved_curves_and_reports_their_mse(tabs):
    (rate, audio), table, summary = tabs.intensity("a dog barks", "swell", "", -40, -15, GUIDANCE, 3, 0.1, 0, 5.0, 1.0, 0.0)
    assert rate == 44100 and audio.dtype == np.int16 and audio.shape == (LENGTH,)
    assert list(table.columns) == ["time (s)", "loudness (dB)", "curve"]
    target = table[table.curve == "target"]["loudness (dB)"].to_numpy()
    achieved = table[table.curve == "achieved"]["loudness (dB)"].to_numpy()
    assert len(target) == len(achieved) == 11 and target.max() <= -15 + 1e-6 and target.argmax() == 5
    assert f"{np.mean((achieved - target) ** 2):.1f}" in summary
    assert "soundctm generate 'a dog barks' --intensity-curve=swell" in summary


def test_intensity_with_a_custom_curve_and_every_method(tabs):
    for method in app_control.METHODS:
        _, table, summary = tabs.intensity("rain", "custom", "-40, -20", -40, -15, method, 2, 0.1, 1, 5.0, 1.0, 0.0)
        target = table[table.curve == "target"]["loudness (dB)"].to_numpy()
        assert target[0] == pytest.approx(-40) and target[-1] == pytest.approx(-20)
        assert app_control.METHODS[method] in summary


def test_bandwidth_extension_shows_both_spectrograms_and_the_lsd(tabs):
    observed, extended, spec_in, spec_out, summary = tabs.bandwidth(upload(), "", 3000, 2, 0, 5.0, 1.0)
    assert observed[0] == extended[0] == 44100 and observed[1].shape == extended[1].shape == (111,)
    assert spec_in.ndim == 3 and spec_in.shape[-1] == 3 and spec_out.shape == spec_in.shape
    assert not np.array_equal(spec_in, spec_out)
    assert "Log-spectral distance" in summary


def test_audio_to_audio_returns_the_result_and_both_spectrograms(tabs):
    (rate, audio), spec_in, spec_out, summary = tabs.audio2audio(upload(), "a dog barks", 0.5, 2, 0, 5.0, 1.0, 0.0)
    assert rate == 44100 and audio.shape == (111,)
    assert spec_in.shape == spec_out.shape and "strength 0.5" in summary


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda t: t.intensity("", "swell", "", -40, -15, GUIDANCE, 2, 0.1, 0, 5, 1, 0), "prompt"),
        (lambda t: t.intensity("a", "custom", "", -40, -15, GUIDANCE, 2, 0.1, 0, 5, 1, 0), "dB values"),
        (lambda t: t.intensity("a", "custom", "-30, nan", -40, -15, GUIDANCE, 2, 0.1, 0, 5, 1, 0), "NaN"),
        (lambda t: t.intensity("a", "custom", "-30", -40, -15, GUIDANCE, 2, 0.1, 0, 5, 1, 0), "at least 2"),
        (lambda t: t.intensity("a", "rising", "", -10, -40, GUIDANCE, 2, 0.1, 0, 5, 1, 0), "range_db"),
        (lambda t: t.intensity("a", "rising", "", -40, -15, "magic", 2, 0.1, 0, 5, 1, 0), "Method"),
        (lambda t: t.intensity("a", "rising", "", -40, -15, GUIDANCE, 0, 0.1, 0, 5, 1, 0), "Steps"),
        (lambda t: t.bandwidth(None, "", 3000, 2, 0, 5, 1), "Upload"),
        (lambda t: t.bandwidth(upload(), "", 30000, 2, 0, 5, 1), "cutoff_hz"),
        (lambda t: t.bandwidth((44100, np.zeros(100, np.int16)), "", 3000, 2, 0, 5, 1), "silent"),
        (lambda t: t.bandwidth((44100, np.zeros(0, np.int16)), "", 3000, 2, 0, 5, 1), "empty"),
        (lambda t: t.audio2audio(upload(), "a dog", 0.0, 2, 0, 5, 1, 0), "strength"),
        (lambda t: t.audio2audio(upload(), "", 0.5, 2, 0, 5, 1, 0), "prompt"),
        (lambda t: t.audio2audio(upload(samples=48000), "a dog", 0.5, 2, 0, 5, 1, 0), "at most 0.12 s"),
    ],
)
def test_bad_input_is_a_message_on_the_page(tabs, call, message):
    with pytest.raises(gr.Error, match=message):
        call(tabs)


def test_the_tabs_add_three_api_endpoints_to_a_blocks():
    pipe = tiny_pipeline()
    with gr.Blocks() as demo:
        with gr.Tabs():
            app_control.add_control_tabs(lambda: pipe, queue_kwargs=dict(concurrency_id="model", concurrency_limit=1))
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"intensity", "bandwidth", "audio2audio"} <= names
