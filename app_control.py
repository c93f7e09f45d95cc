"""The demo's control and editing tabs: loudness curve, bandwidth extension, audio → audio (Gradio).

`add_control_tabs(get_pipeline)` adds three tabs to the `gr.Blocks` (or `gr.Tabs`) being built:

- Loudness curve: text-to-sound steered to a target loudness curve (a preset or the user's dB values) by loss-based
  guidance (Algorithm 3), by DITTO-2 noise optimisation, or not at all; plots the target against the achieved curve.
- Bandwidth extension: a recording is low-passed at the cut-off and extended back to full band (Appendix E.5);
  shows the spectrograms (log-frequency, as the paper's Figure 13) of the low-passed input and of the output.
- Audio → audio: a recording refined toward a prompt from the noise level set by `strength`; spectrograms of input
  and output.

`get_pipeline()` returns the loaded student `SoundCTMPipeline` (a Stable Audio Open model is refused with a message:
`editing_unsupported`); every call runs a companion pipeline built from its
components with its own scheduler, so calls do not share sampling state. The handlers raise `gr.Error` with the
pipeline's message for bad input and are API endpoints (`/intensity`, `/bandwidth`, `/audio2audio`).
"""

from __future__ import annotations

import html
import math
import shlex
import time
from typing import Callable

import gradio as gr
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from soundctm.intensity import DEFAULT_RANGE_DB, INTENSITY_PRESETS, intensity_loss, parse_curve
from soundctm.pipeline import DEFAULT_GUIDANCE_SCALE
from soundctm.pipeline_soundctm_audio2audio import SoundCTMAudioToAudioPipeline
from soundctm.pipeline_soundctm_bwe import DEFAULT_CUTOFF_HZ, SoundCTMBandwidthExtensionPipeline
from soundctm.pipeline_soundctm_guidance import DEFAULT_RHO, DITTO2_ITERATIONS, SoundCTMGuidancePipeline
from soundctm.pipeline_stable_audio_soundctm import SoundCTMStableAudioPipeline
from soundctm.signal_ops import log_spectral_distance, lowpass, prepare_input_audio

CUSTOM = "custom"
METHODS = {
    "Loss-based guidance (Algorithm 3)": "guidance",
    "DITTO-2 (optimise the starting noise)": "ditto2",
    "None (default generation)": "none",
}
MAX_STEPS = 64
MAX_SEED = 2**32 - 1
SPECTROGRAM_DB = (-100.0, 0.0)


# ------------------------------------------------------------------------------------------------ helpers
def editing_unsupported(pipe) -> str | None:
    """Why these tabs cannot run on the loaded pipeline `pipe`, in words for the page; None when they can. Their
    pipelines are subclasses of `SoundCTMPipeline` (the SoundCTM DiT and UNet families): they cannot take a Stable
    Audio Open model."""
    if isinstance(pipe, SoundCTMStableAudioPipeline):
        return ("The editing tools (loudness curve, bandwidth extension, audio → audio) work with the SoundCTM DiT and "
                "UNet models; this is a Stable Audio Open model (SoundCTMStableAudioPipeline), which they do not "
                "support. Compare and Drafts → refine work with it.")
    return None


def _error(message: str) -> gr.Error:
    return gr.Error(html.escape(message), title="Invalid input", print_exception=False)


def _number(name: str, value, low: float, high: float, integer: bool = False):
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _error(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    if not low <= value <= high or (integer and value != int(value)):
        raise _error(f"{name} must be a {'whole number' if integer else 'number'} from {low:g} to {high:g}, got {value:g}")
    return int(value) if integer else float(value)


def _page_audio(audio: np.ndarray, sampling_rate: int):
    """`(channels, samples)` float → (rate, int16) for gr.Audio (int16 keeps the loudness; floats get normalised)."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    return sampling_rate, (pcm[0] if pcm.shape[0] == 1 else pcm.T)


def _input_audio(value, name: str):
    """gr.Audio's (rate, (samples,) or (samples, channels)) → ((channels, samples) array, rate)."""
    if value is None:
        raise _error(f"Upload or record a sound for {name} first.")
    rate, data = value
    data = np.asarray(data)
    return (data.T if data.ndim == 2 else data), int(rate)


def spectrogram_image(audio: np.ndarray, sampling_rate: int, title: str, cutoff_hz: float | None = None) -> np.ndarray:
    """RGB image of the STFT power of `(channels, samples)` audio in dB full scale, frequency on a log axis (as the
    paper's Figure 13), with the bandwidth-extension cut-off drawn when given."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float64)).reshape(-1, np.shape(audio)[-1]).mean(0)
    n_fft = 2048
    window = torch.hann_window(n_fft, dtype=torch.float64)
    stft = torch.stft(x, n_fft, n_fft // 4, window=window, center=True, pad_mode="constant", return_complex=True)
    db = 20.0 * np.log10(np.maximum((stft.abs() * 2.0 / window.sum()).numpy(), 1e-10))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sampling_rate)
    fig = Figure(figsize=(4.8, 2.6), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(np.linspace(0.0, x.numel() / sampling_rate, db.shape[1]), freqs[1:], db[1:], shading="nearest",
                         cmap="magma", vmin=SPECTROGRAM_DB[0], vmax=SPECTROGRAM_DB[1])  # fmt: skip
    ax.set_yscale("log")
    if cutoff_hz is not None:
        ax.axhline(cutoff_hz, color="white", linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    fig.colorbar(mesh, ax=ax, label="dB (full scale)")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ------------------------------------------------------------------------------------------------ handlers
class ControlTabs:
    """The handlers behind the three tabs; `get_pipeline()` returns the loaded student pipeline."""

    def __init__(self, get_pipeline: Callable, model_arg: str | None = None, ditto_iterations: int = DITTO2_ITERATIONS,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE):
        self.get_pipeline = get_pipeline
        self.guidance_scale = guidance_scale  # the ω sliders' start: the model's own ω
        self.model_arg = model_arg  # `--model` for the CLI command shown beside a result (None: the CLI's default)
        self.ditto_iterations = ditto_iterations

    def _companion(self, cls):
        pipe = self.get_pipeline()
        unsupported = editing_unsupported(pipe)
        if unsupported:
            raise gr.Error(unsupported, title="Not available for this model", print_exception=False)
        if not pipe.is_student:
            raise _error("These tools need a SoundCTM student model.")
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        return cls.from_pipe(pipe, scheduler=scheduler)

    @staticmethod
    def _run(call):
        try:
            return call()
        except (ValueError, TypeError) as err:
            raise _error(str(err)) from err

    def intensity(self, prompt, curve, custom_curve, low_db, high_db, method, steps, rho, seed, omega, nu, gamma,
                  progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        """Text-to-sound toward a loudness curve: (audio, target vs achieved curve table, summary text)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise _error("Type a prompt first: a few words describing the sound.")
        if method not in METHODS:
            raise _error(f"Method must be one of {', '.join(METHODS)}, got {method!r}")
        text = custom_curve if curve == CUSTOM else curve
        if not isinstance(text, str) or not text.strip():
            raise _error("Choose a preset curve, or type dB values such as -40, -10, -40.")
        curve_value = self._run(lambda: parse_curve(text))
        low, high = _number("Quiet level (dB)", low_db, -100, 0), _number("Loud level (dB)", high_db, -100, 0)
        steps = _number("Steps", steps, 1, MAX_STEPS, integer=True)
        seed = _number("Seed", seed, 0, MAX_SEED, integer=True)
        kind = METHODS[method]
        pipe = self._companion(SoundCTMGuidancePipeline)
        start = time.perf_counter()
        audio = self._run(lambda: pipe(
            prompt.strip(), num_inference_steps=steps, guidance_scale=_number("ω (omega)", omega, 0, 20),
            nu=_number("ν (nu)", nu, 0, 20), gamma=_number("γ (gamma)", gamma, 0, 1),
            generator=torch.Generator(pipe._execution_device).manual_seed(seed), intensity_curve=curve_value,
            intensity_range_db=(low, high), rho=_number("ρ (rho)", rho, 0, 10) if kind == "guidance" else 0.0,
            noise_optimization_steps=self.ditto_iterations if kind == "ditto2" else 0,
        ).audios[0])  # fmt: skip
        elapsed = time.perf_counter() - start
        loss = intensity_loss(curve_value, audio.shape[-1], pipe.sampling_rate, (low, high))
        achieved = loss.feature(torch.from_numpy(audio)[None])[0].numpy()
        target = loss.target_db.numpy()
        times = np.arange(len(target)) / loss.feature.frame_rate
        table = pd.DataFrame({
            "time (s)": np.concatenate([times, times]),
            "loudness (dB)": np.concatenate([target, achieved]),
            "curve": ["target"] * len(target) + ["achieved"] * len(achieved),
        })  # fmt: skip
        mse = float(np.mean((achieved - target) ** 2))
        command = ["soundctm", "generate", prompt.strip(), "--intensity-curve=" + (curve if curve != CUSTOM else ",".join(
            f"{v:g}" for v in curve_value)), "--intensity-range", f"{low:g}", f"{high:g}", "--steps", str(steps),
            "--seed", str(seed), "--omega", f"{omega:g}", "--nu", f"{nu:g}", "--gamma", f"{gamma:g}"]  # fmt: skip
        if kind == "none":
            command = None
        else:
            command += ["--intensity-method", kind]
            command += ["--rho", f"{rho:g}"] if kind == "guidance" else ["--ditto-iterations", str(self.ditto_iterations)]
            command += (["--model", self.model_arg] if self.model_arg else []) + ["-o", "loudness.wav"]
        summary = f"Curve MSE: {mse:.1f} dB² ({kind}, {steps} steps, {elapsed:.1f} s)"
        if command:
            summary += "\n" + shlex.join(command)
        return _page_audio(audio, pipe.sampling_rate), table, summary

    def bandwidth(self, audio, prompt, cutoff, steps, seed, omega, nu, progress=gr.Progress(track_tqdm=True)):
        """Low-passes the recording at `cutoff` and extends it: (low-passed, extended, their spectrograms, LSD text)."""
        data, rate = _input_audio(audio, "bandwidth extension")
        steps = _number("Steps", steps, 1, MAX_STEPS, integer=True)
        seed = _number("Seed", seed, 0, MAX_SEED, integer=True)
        cutoff = _number("Cut-off (Hz)", cutoff, 1, 10**6)
        pipe = self._companion(SoundCTMBandwidthExtensionPipeline)
        start = time.perf_counter()
        extended = self._run(lambda: pipe(
            data, sampling_rate=rate, prompt=(prompt or "").strip(), cutoff_hz=cutoff, num_inference_steps=steps,
            guidance_scale=_number("ω (omega)", omega, 0, 20), nu=_number("ν (nu)", nu, 0, 20),
            generator=torch.Generator(pipe._execution_device).manual_seed(seed), output_type="pt",
        ).audios)  # fmt: skip
        elapsed = time.perf_counter() - start
        original, _ = prepare_input_audio(data, rate, pipe.sampling_rate, name="audio")
        observed = lowpass(original, cutoff, pipe.sampling_rate)
        lsd_in = log_spectral_distance(observed, original).item()
        lsd_out = log_spectral_distance(extended, original).item()
        summary = (f"Log-spectral distance to the uploaded recording: low-passed {lsd_in:.2f}, extended {lsd_out:.2f} "
                   f"(lower is closer; meaningful when the upload is full-band). {steps} steps, {elapsed:.1f} s.")  # fmt: skip
        observed, extended = observed[0].numpy(), extended[0].numpy()
        return (
            _page_audio(observed, pipe.sampling_rate),
            _page_audio(extended, pipe.sampling_rate),
            spectrogram_image(observed, pipe.sampling_rate, f"input, low-passed at {cutoff:g} Hz", cutoff),
            spectrogram_image(extended, pipe.sampling_rate, "bandwidth-extended", cutoff),
            summary,
        )

    def audio2audio(self, audio, prompt, strength, steps, seed, omega, nu, gamma, progress=gr.Progress(track_tqdm=True)):
        """Refines the recording toward the prompt: (output, input and output spectrograms, summary text)."""
        data, rate = _input_audio(audio, "audio → audio")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _error("Type a prompt: what the sound should become.")
        steps = _number("Steps", steps, 1, MAX_STEPS, integer=True)
        seed = _number("Seed", seed, 0, MAX_SEED, integer=True)
        pipe = self._companion(SoundCTMAudioToAudioPipeline)
        start = time.perf_counter()
        out = self._run(lambda: pipe(
            prompt.strip(), audio=data, sampling_rate=rate, strength=_number("Strength", strength, 0, 1),
            num_inference_steps=steps, guidance_scale=_number("ω (omega)", omega, 0, 20), nu=_number("ν (nu)", nu, 0, 20),
            gamma=_number("γ (gamma)", gamma, 0, 1), generator=torch.Generator(pipe._execution_device).manual_seed(seed),
        ).audios[0])  # fmt: skip
        elapsed = time.perf_counter() - start
        original, _ = prepare_input_audio(data, rate, pipe.sampling_rate, name="audio")
        return (
            _page_audio(out, pipe.sampling_rate),
            spectrogram_image(original[0].numpy(), pipe.sampling_rate, "input"),
            spectrogram_image(out, pipe.sampling_rate, f"output, strength {strength:g}"),
            f"strength {strength:g}, {steps} step(s), seed {seed}: {elapsed:.1f} s",
        )

    # ------------------------------------------------------------------------------------------------ page
    def build(self, wrap: Callable = lambda fn: fn, queue_kwargs: dict | None = None) -> None:
        """Adds the three tabs to the Blocks/Tabs being built. `wrap` decorates each handler (e.g. `spaces.GPU`);
        `queue_kwargs` go to every event (e.g. the app's `concurrency_id` so model calls queue together)."""
        queue_kwargs = queue_kwargs or {}

        def guidance_row(with_gamma: bool = True) -> list:
            with gr.Row():
                sliders = [gr.Slider(0.0, 20.0, value=self.guidance_scale, step=0.5, label="ω (omega)"),
                           gr.Slider(0.0, 20.0, value=1.0, step=0.5, label="ν (nu)")]  # fmt: skip
                if with_gamma:
                    sliders.append(gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="γ (gamma)"))
            return sliders

        with gr.Tab("Loudness curve"):
            gr.Markdown("Generate a sound whose loudness follows a curve: loss-based guidance (the paper's Algorithm 3) "
                        "steers every step toward the target; DITTO-2 optimises the starting noise instead.")  # fmt: skip
            with gr.Row():
                i_prompt = gr.Textbox(label="Prompt", placeholder="rain falls on a roof", scale=3)
                i_curve = gr.Dropdown(list(INTENSITY_PRESETS) + [CUSTOM], value="swell", label="Target curve", scale=1)
                i_custom = gr.Textbox(label="Custom curve (dB values over the clip)", placeholder="-40, -10, -40", scale=2)
            with gr.Row():
                i_low = gr.Number(value=DEFAULT_RANGE_DB[0], label="Quiet level (dB)")
                i_high = gr.Number(value=DEFAULT_RANGE_DB[1], label="Loud level (dB)")
                i_method = gr.Radio(list(METHODS), value=next(iter(METHODS)), label="Method")
            with gr.Row():
                i_steps = gr.Slider(1, MAX_STEPS, value=16, step=1, label="Steps")
                i_rho = gr.Slider(0.0, 2.0, value=DEFAULT_RHO, step=0.01, label="ρ (rho): guidance step")
                i_seed = gr.Number(value=0, precision=0, label="Seed")
            i_guidance = guidance_row()
            i_button = gr.Button("Generate", variant="primary")
            with gr.Row():
                i_audio = gr.Audio(label="Result", type="numpy", format="wav", interactive=False)
                i_plot = gr.LinePlot(x="time (s)", y="loudness (dB)", color="curve", label="Target vs achieved loudness")
            i_text = gr.Textbox(label="Result", lines=2, interactive=False)
            i_button.click(wrap(self.intensity),
                           inputs=[i_prompt, i_curve, i_custom, i_low, i_high, i_method, i_steps, i_rho, i_seed, *i_guidance],
                           outputs=[i_audio, i_plot, i_text], api_name="intensity", **queue_kwargs)  # fmt: skip

        with gr.Tab("Bandwidth extension"):
            gr.Markdown("Upload a recording: it is low-passed at the cut-off, then the band above is generated while "
                        "the band below is kept (zero-shot, data consistency as in Moliner et al. 2023).")  # fmt: skip
            with gr.Row():
                b_input = gr.Audio(label="Recording", type="numpy", sources=["upload", "microphone"])
                with gr.Column():
                    b_prompt = gr.Textbox(label="Caption (optional)", placeholder="a dog barks")
                    b_cutoff = gr.Number(value=DEFAULT_CUTOFF_HZ, label="Cut-off (Hz)")
                    b_steps = gr.Slider(1, 16, value=4, step=1, label="Steps")
                    b_seed = gr.Number(value=0, precision=0, label="Seed")
                    b_guidance = guidance_row(with_gamma=False)
            b_button = gr.Button("Extend", variant="primary")
            with gr.Row():
                b_observed = gr.Audio(label="Low-passed input", type="numpy", format="wav", interactive=False)
                b_output = gr.Audio(label="Extended", type="numpy", format="wav", interactive=False)
            with gr.Row():
                b_spec_in = gr.Image(label="Input spectrogram", type="numpy", interactive=False)
                b_spec_out = gr.Image(label="Output spectrogram", type="numpy", interactive=False)
            b_text = gr.Textbox(label="Result", interactive=False)
            b_button.click(wrap(self.bandwidth), inputs=[b_input, b_prompt, b_cutoff, b_steps, b_seed, *b_guidance],
                           outputs=[b_observed, b_output, b_spec_in, b_spec_out, b_text], api_name="bandwidth",
                           **queue_kwargs)  # fmt: skip

        with gr.Tab("Audio → audio"):
            gr.Markdown("Upload a sound and describe what it should become; strength 1 ignores the input (text to "
                        "sound), small strengths keep most of it.")  # fmt: skip
            with gr.Row():
                a_input = gr.Audio(label="Sound", type="numpy", sources=["upload", "microphone"])
                with gr.Column():
                    a_prompt = gr.Textbox(label="Prompt", placeholder="a dog barks")
                    a_strength = gr.Slider(0.01, 1.0, value=0.5, step=0.01, label="Strength")
                    a_steps = gr.Slider(1, MAX_STEPS, value=4, step=1, label="Steps")
                    a_seed = gr.Number(value=0, precision=0, label="Seed")
                    a_guidance = guidance_row()
            a_button = gr.Button("Refine", variant="primary")
            a_output = gr.Audio(label="Result", type="numpy", format="wav", interactive=False)
            with gr.Row():
                a_spec_in = gr.Image(label="Input spectrogram", type="numpy", interactive=False)
                a_spec_out = gr.Image(label="Output spectrogram", type="numpy", interactive=False)
            a_text = gr.Textbox(label="Result", interactive=False)
            a_button.click(wrap(self.audio2audio),
                           inputs=[a_input, a_prompt, a_strength, a_steps, a_seed, *a_guidance],
                           outputs=[a_output, a_spec_in, a_spec_out, a_text], api_name="audio2audio", **queue_kwargs)  # fmt: skip


def add_control_tabs(get_pipeline: Callable, model_arg: str | None = None, wrap: Callable = lambda fn: fn,
                     queue_kwargs: dict | None = None, ditto_iterations: int = DITTO2_ITERATIONS,
                     guidance_scale: float = DEFAULT_GUIDANCE_SCALE) -> ControlTabs:  # fmt: skip
    """Adds the Loudness curve, Bandwidth extension and Audio → audio tabs inside the current `gr.Blocks`/`gr.Tabs`;
    their ω sliders start at `guidance_scale`."""
    tabs = ControlTabs(get_pipeline, model_arg, ditto_iterations, guidance_scale)
    tabs.build(wrap, queue_kwargs)
    return tabs
