"""SoundCTM demo: one prompt, 1-step drafts, and the same sound refined with more steps (Gradio).

    python app.py                                   # the bundled demo model (student + its teacher), offline:
                                                    # assets/soundctm-demo (recipes/procedural/README.md)
    python app.py --model DIR_OR_HUB_ID [--teacher DIR_OR_HUB_ID] [--port 7860]
    SOUNDCTM_MODEL=owner/student SOUNDCTM_TEACHER=owner/teacher python app.py     # e.g. on a Space

Which model: `--model`, else $SOUNDCTM_MODEL, else the bundled `assets/soundctm-demo/student`. The model may also be
a folder holding `student/` and `teacher/` pipeline folders.
Which teacher (for the "Teacher, Heun N steps" column, N its folder's own step count, 40 unless it sets one): `--teacher`, else $SOUNDCTM_TEACHER, else, for a local
student folder, a sibling folder named `teacher/` (the bundled layout `assets/soundctm-demo/{student,teacher}`).
`--no-teacher` turns the column off.

Two tabs:
- Compare: one seed, so every column starts from the same noise; with γ = 0 the columns are the same sound
  with 1, 2, 4, ... steps (and the teacher's Heun result from that noise).
- Drafts → refine: several 1-step drafts with different seeds in one batch; pick one and refine it with more
  steps on its seed.
and the editing tabs of app_control.py (loudness curve, bandwidth extension, audio → audio) for the SoundCTM DiT and
UNet models. A Stable Audio Open student (and its teacher) runs in the first two, in stereo; the editing tabs are
replaced by a note for it.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:  # On a ZeroGPU Space `spaces` must be imported before torch initialises CUDA; elsewhere it is optional.
    import spaces
except ImportError:
    spaces = None
# On ZeroGPU hardware each `spaces.GPU` call runs in a process of its own; the `spaces` package is a no-op elsewhere.
ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")

import argparse
import contextvars
import functools
import html
import inspect
import logging
import math
import secrets
import shlex
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from huggingface_hub import ModelCard
import numpy as np
import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers.audio_utils import hertz_to_mel, mel_filter_bank

from app_control import add_control_tabs, editing_unsupported
from soundctm.cli import DTYPES, ENV_MODEL, bundled_model_dir, load_pipeline, resolve_model
from soundctm.pipeline import DEFAULT_GUIDANCE_SCALE

logger = logging.getLogger("soundctm.app")

ENV_TEACHER = "SOUNDCTM_TEACHER"
STEP_CHOICES = (1, 2, 4, 8, 16)
TEACHER = "teacher"  # the value of the teacher's entry among the step choices
MAX_SEED = 2**32 - 1
MAX_DRAFTS = 8
MAX_REFINE_STEPS = 64
MAX_PROMPT_CHARS = 1000
OMEGA_RANGE = (1.0, 10.0)  # the ω range the authors distil over (ω ~ U[1, 10])
NU_RANGE = (0.0, 10.0)
DB_RANGE = (-100.0, 0.0)  # every spectrogram's colour scale, in dB relative to full scale
MEL_BANDS = 128

OMEGA_INFO = "How strongly the sound follows the prompt (the teacher's guidance the student learned): higher = closer to the prompt, lower = more variety."
NU_INFO = "The student's own extra guidance: 1 = off; higher pushes further toward the prompt and away from the negative prompt (5 suits 8-16 steps)."
GAMMA_INFO = "Fresh noise added between steps: 0 keeps every step count on the same sound; 1 lets more steps change the sound."
SEED_INFO = "The same seed and settings give the same sound again."
EXAMPLES = [
    "a dog barks",
    "rain falls on a roof",
    "a siren wails, sweeping up and down",
    "a high beep repeating fast",
    "a low rumble fading in",
    "birds chirp in the distance",
]
# Every exception's message reaches the page (the handlers raise gr.Error with plain words; this also covers the
# inputs Gradio itself rejects, such as a missing slider value sent through the API).
LAUNCH_KWARGS = dict(show_error=True)
CSS = """
.result-column img { width: 100%; height: auto; }
"""


# ------------------------------------------------------------------------------------------------ which models
def resolve_models(model: str | None = None, teacher: str | None = None, use_teacher: bool = True) -> tuple[str, str | None]:
    """
    (student, teacher or None). Student: `model` > $SOUNDCTM_MODEL > the bundled demo student; a folder holding
    `student/` and `teacher/` pipeline folders stands for both. Teacher: `teacher` > $SOUNDCTM_TEACHER > a folder
    `teacher/` beside a local student folder. Raises ValueError when no model is found.
    """
    student = resolve_model(model)
    teacher = teacher or os.environ.get(ENV_TEACHER) or None
    root = Path(student)
    if root.is_dir() and not (root / "model_index.json").is_file() and (root / "student" / "model_index.json").is_file():
        student = str(root / "student")
        if teacher is None and (root / "teacher" / "model_index.json").is_file():
            teacher = str(root / "teacher")
    elif teacher is None and (root / "model_index.json").is_file():
        sibling = root.resolve().parent / "teacher"
        if sibling != root.resolve() and (sibling / "model_index.json").is_file():
            teacher = str(sibling)
    return student, (teacher if use_teacher else None)


class LazyPipeline:
    """A pipeline loaded on first use. A failed load becomes a readable `gr.Error` and is retried on the next call."""

    def __init__(self, model: str, role: str, device: str | None = None, dtype: str = "fp32"):
        self.model, self.role, self.device, self.dtype = model, role, device, dtype
        self._pipe = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._pipe is None:
                try:
                    pipe = load_pipeline(self.model, self.device, self.dtype)
                except Exception as err:  # a missing folder, a broken file, no network for a Hub id, ...
                    logger.exception("could not load the %s %s", self.role, self.model)
                    raise gr.Error(
                        f"Could not load the {self.role} model {html.escape(self.model)!r}: "
                        f"{html.escape(type(err).__name__)}: {html.escape(str(err))}",
                        title="Model not loaded",
                    ) from err
                if pipe.is_student != (self.role == "student"):
                    kind = "student" if pipe.is_student else "teacher"
                    raise gr.Error(
                        f"{html.escape(self.model)!r} is a SoundCTM {kind}, but it was given as the {self.role} "
                        f"(pass a student as --model and a teacher as --teacher)",
                        title="Wrong kind of model",
                    )
                self._pipe = pipe
            return self._pipe

    @property
    def loaded(self):
        return self._pipe

    def run(self, **kwargs):
        """One pipeline call on its own copy of the scheduler (its timesteps are per call), so calls may overlap."""
        pipe = self.get()
        own = type(pipe)(**{**pipe.components, "scheduler": pipe.scheduler.__class__.from_config(pipe.scheduler.config)},
                         **pipeline_options(pipe))
        return own(**kwargs).audios


def pipeline_options(pipe) -> dict:
    """The arguments of `type(pipe)(...)` besides its components, as `pipe` was made with them (its config): e.g.
    `text_embedding` and `guidance_scale` for a `SoundCTMPipeline`; `SoundCTMStableAudioPipeline` has no
    `text_embedding`."""
    parameters = inspect.signature(type(pipe).__init__).parameters
    return {name: value for name, value in pipe.config.items()
            if name in parameters and name not in pipe.components and not name.startswith("_")}


def on_gpu(fn):
    """`spaces.GPU` on a ZeroGPU Space (a no-op elsewhere); `fn` unchanged when `spaces` is not installed."""
    return spaces.GPU(fn) if spaces is not None else fn


class ComputeThreads:
    """
    Runs the app's PyTorch work (model loading and every handler) on `workers` long-lived threads, in the caller's
    context (Gradio's progress and warnings live in context variables).

    Why: PyTorch's CPU parallelism is libgomp's OpenMP, which keeps a thread team for every thread that has run a
    parallel region. Once more threads are kept than there are cores, its idle threads stop spin-waiting, and every
    one of a small model's thousands of short operations pays a sleep and a wake-up. Gradio calls handlers on a pool
    of threads, beside the main thread that loaded the models: that made the demo's compare 1.5× slower through HTTP
    than the same handler run on the main thread (`benchmarks/bench_demo.py` measures the served app).
    """

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="soundctm-compute")

    def call(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on a compute thread; its result, or its exception raised here."""
        return self._pool.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()

    def wrap(self, fn):
        """`fn` as a Gradio handler that runs on a compute thread (same signature, so gr.Progress is still found); a
        generator function stays one, each of its steps run on a compute thread."""
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def stream(*args, **kwargs):
                context = contextvars.copy_context()
                updates = fn(*args, **kwargs)  # runs nothing yet
                done = object()
                while (update := self._pool.submit(context.run, next, updates, done).result()) is not done:
                    yield update

            return stream

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            return self.call(fn, *args, **kwargs)

        return handler

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------------ audio → page
def to_int16(audio: np.ndarray) -> np.ndarray:
    """`(channels, samples)` float audio in [-1, 1] → int16 `(samples,)` or `(samples, channels)`.

    Gradio peak-normalises float audio; int16 keeps the model's loudness, so columns compare fairly.
    """
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm[0] if pcm.shape[0] == 1 else pcm.T


@functools.lru_cache(maxsize=8)
def _mel_analysis(sampling_rate: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(n_fft, Hann window, mel filters (MEL_BANDS, n_fft // 2 + 1)) for a ≈ 40 ms analysis window."""
    n_fft = 2 ** round(math.log2(sampling_rate * 0.04))
    filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=MEL_BANDS, min_frequency=0.0,
                              max_frequency=sampling_rate / 2, sampling_rate=sampling_rate)
    return n_fft, torch.hann_window(n_fft), torch.from_numpy(filters.T).float()


def spectrogram_image(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """
    RGB image (H, W, 3) of the mel spectrogram of `(channels, samples)` audio, on one fixed scale for every image:
    colour = dB relative to full scale in `DB_RANGE` (a full-scale sine reads about 0 dB), `MEL_BANDS` mel bands from
    0 Hz to the Nyquist frequency, time from 0 to the clip's length. The channels' power spectra are averaged (not
    their waveforms, which cancel where stereo channels are out of phase): a sound in both channels draws as it does
    in one.
    """
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1, np.shape(audio)[-1])
    n_fft, window, filters = _mel_analysis(sampling_rate)
    stft = torch.stft(x, n_fft, n_fft // 4, window=window, center=True, pad_mode="constant", return_complex=True)
    power = torch.view_as_real(stft).square().sum(-1).mean(0) * (2.0 / window.sum()) ** 2  # a full-scale sine → 1 (0 dB)
    db = (10.0 * torch.log10((filters @ power).clamp(min=1e-20))).numpy()
    frame, (top, bottom, left, right) = _spectrogram_frame(sampling_rate, round(x.shape[-1] / sampling_rate, 3))
    # The image drawn into the plot area as imshow(origin="lower", interpolation="nearest") would: pixel column j
    # shows frame ⌊j·T/W⌋, pixel row i (from the top) band MEL_BANDS − 1 − ⌊i·MEL_BANDS/H⌋.
    rows = MEL_BANDS - 1 - (np.arange(bottom - top) * MEL_BANDS) // (bottom - top)
    columns = (np.arange(right - left) * db.shape[1]) // (right - left)
    colours = _COLOUR_MAP(np.clip((db - DB_RANGE[0]) / (DB_RANGE[1] - DB_RANGE[0]), 0.0, 1.0), bytes=True)[..., :3]
    image = frame.copy()
    image[top:bottom, left:right] = colours[rows[:, None], columns[None, :]]
    for edge in (np.s_[top, left:right], np.s_[bottom - 1, left:right], np.s_[top:bottom, left], np.s_[top:bottom, right - 1]):
        image[edge] = frame[edge]  # the axes' frame lines stay on top, as matplotlib draws them
    return image


_COLOUR_MAP = matplotlib.colormaps["magma"]


@functools.lru_cache(maxsize=16)
def _spectrogram_frame(sampling_rate: int, length: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """
    The spectrogram's figure without its image (axes, ticks, labels, colour bar), drawn once per sampling rate and
    clip length, and the pixel box (top, bottom, left, right) of its plot area: drawing the axes is most of the cost
    of a figure, and the compare view shows six at a time.
    """
    nyquist = sampling_rate / 2
    # Fixed margins rather than a layout engine: every image has the same plot area, and drawing skips a layout pass.
    fig = Figure(figsize=(4.8, 2.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.15, 0.19, 0.64, 0.77))
    colorbar_ax = fig.add_axes((0.81, 0.19, 0.03, 0.77))
    ax.set_xlim(0.0, length)
    ax.set_ylim(0.0, MEL_BANDS)
    ticks = [f for f in (0, 500, 1000, 2000, 5000, 10000, 20000) if f < nyquist]
    ax.set_yticks(hertz_to_mel(np.array(ticks, dtype=float)) / hertz_to_mel(nyquist) * MEL_BANDS,
                  [f"{f // 1000}k" if f >= 1000 else str(f) for f in ticks])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz, mel scale)")
    scale = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(*DB_RANGE), cmap=_COLOUR_MAP)
    fig.colorbar(scale, cax=colorbar_ax, label="dB (full scale)")
    canvas.draw()
    frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    box = ax.get_window_extent()  # display pixels, origin at the bottom left
    height = frame.shape[0]
    top, bottom = height - round(box.y1), height - round(box.y0)
    left, right = round(box.x0), round(box.x1)
    return frame, (top, bottom, left, right)


# ------------------------------------------------------------------------------------------------ input checks
def invalid(message: str, title: str = "Invalid input") -> gr.Error:
    """The error a user sees for a bad value: shown in the page, no traceback in the server log."""
    return gr.Error(message, title=title, print_exception=False)


def _is_skip(value) -> bool:
    """Whether an output value is `gr.skip()` (leave the component as it is)."""
    return isinstance(value, dict) and value == gr.skip()


def _check_number(name: str, value, low: float, high: float, integer: bool = False):
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"{name} must be a number from {low:g} to {high:g}, got {html.escape(repr(value))}")
    if integer and value != int(value):
        raise invalid(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise invalid(f"{name} must be from {low:g} to {high:g}, got {value:g}")
    return int(value) if integer else float(value)


def duration_slider(max_len: float) -> tuple[float, float]:
    """(step, end) of the duration slider: a round step (0.1 s for a 4 s model, 1 s for a 30 s one) and the model's
    length rounded up to it, so the slider shows "4.1", not "4.08671201814059"; its end means the full length."""
    step = 10.0 ** math.floor(math.log10(max_len / 20))
    digits = max(0, -math.floor(math.log10(step)))
    return step, round(math.ceil(max_len / step - 1e-9) * step, digits)


def model_example_prompts(pipe) -> list[str]:
    """The example prompts of the model card (README.md, `widget` metadata) in the pipeline's folder, if any."""
    readme = Path(getattr(pipe.config, "_name_or_path", None) or "") / "README.md"
    if not readme.is_file():
        return []
    try:
        widget = ModelCard.load(readme).data.to_dict().get("widget") or []
    except Exception:  # a card without metadata, or with some we cannot read: no examples from it
        logger.warning("could not read the examples of %s", readme, exc_info=True)
        return []
    return [entry["text"] for entry in widget if isinstance(entry, dict) and isinstance(entry.get("text"), str)]


def _exact(value: float) -> str:
    """The shortest text that reads back as the same float ("5", "0.05"): a copied command gives the same sound."""
    return np.format_float_positional(value, trim="-")


@dataclass
class Settings:
    """What decides a sound: everything the CLI needs to make it again."""

    prompt: str
    negative_prompt: str | None
    seed: int
    omega: float
    nu: float
    gamma: float
    duration: float
    full_length: bool = False

    def pipeline_kwargs(self, device) -> dict:
        return dict(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            guidance_scale=self.omega,
            nu=self.nu,
            gamma=self.gamma,
            audio_length_in_s=self.duration,
            generator=torch.Generator(device).manual_seed(self.seed),
        )

    def describe(self, lines: list[str]) -> str:
        """The settings as text to copy, then one `soundctm generate` command per result in `lines`."""
        head = [
            f"prompt: {self.prompt}",
            f"negative prompt: {self.negative_prompt or '(none)'}",
            f"seed: {self.seed}   ω (omega): {self.omega:g}   ν (nu): {self.nu:g}   γ (gamma): {self.gamma:g}   duration: {self.duration:.2f} s",
        ]
        return "\n".join(head + lines)

    def command(self, steps: int, model: str | None, output: str) -> str:
        args = ["soundctm", "generate", self.prompt, "--seed", str(self.seed), "--steps", str(steps),
                "--omega", _exact(self.omega), "--nu", _exact(self.nu), "--gamma", _exact(self.gamma)]
        if not self.full_length:
            args += ["--duration", _exact(self.duration)]
        if self.negative_prompt:
            args += ["--negative-prompt", self.negative_prompt]
        if model is not None:
            args += ["--model", model]
        return shlex.join(args + ["-o", output])


# ------------------------------------------------------------------------------------------------ the app
class SoundCTMApp:
    """The handlers behind the page; each is also an API endpoint (`/compare`, `/drafts`, `/refine`)."""

    def __init__(self, student: str, teacher: str | None = None, device: str | None = None, dtype: str = "fp32",
                 step_choices: tuple[int, ...] = STEP_CHOICES):
        if not step_choices or any(not isinstance(n, int) or not 1 <= n <= MAX_REFINE_STEPS for n in step_choices):
            raise ValueError(f"step_choices must be step counts from 1 to {MAX_REFINE_STEPS}, got {step_choices!r}")
        self.student = LazyPipeline(student, "student", device, dtype)
        self.teacher = LazyPipeline(teacher, "teacher", device, dtype) if teacher else None
        self.step_choices = tuple(sorted(set(step_choices)))
        self.slots = [str(n) for n in self.step_choices] + ([TEACHER] if self.teacher else [])
        self.compute: ComputeThreads | None = None  # made by build()

    # ----------------------------------------------------------------------------------------- helpers
    def teacher_steps(self) -> int:
        """Heun steps of the teacher column: the teacher folder's own default (40, the paper's baseline, unless the
        folder sets another: the bundled demo teacher, 18)."""
        pipe = self.teacher.loaded if self.teacher else None
        return 40 if pipe is None else pipe.default_num_inference_steps

    def slot_label(self, slot: str) -> str:
        if slot == TEACHER:
            return f"Teacher (Heun, {self.teacher_steps()} steps)"
        return f"{slot} step" + ("" if slot == "1" else "s")

    def max_duration(self) -> float | None:
        pipe = self.student.loaded
        return None if pipe is None else float(pipe.max_audio_length_in_s)

    def _model_arg(self, lazy: LazyPipeline) -> str | None:
        """`--model` for the CLI command (None for the bundled student, which the CLI uses by default)."""
        if lazy.role == "student" and Path(lazy.model).resolve() == bundled_model_dir().resolve():
            return None
        return lazy.model

    def settings(self, prompt, negative_prompt, seed, omega, nu, gamma, duration) -> Settings:
        """Checks the page's inputs and turns them into `Settings`; raises gr.Error naming the bad value."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise invalid("Type a prompt first: a few words describing the sound.", title="No prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise invalid(f"The prompt is {len(prompt)} characters long; keep it under {MAX_PROMPT_CHARS}.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise invalid("The negative prompt must be text.")
        pipe = self.student.get()
        max_len = float(pipe.max_audio_length_in_s)
        slider_max = duration_slider(max_len)[1]  # the slider's end, the model's length rounded up to its step
        duration = max_len if duration is None else _check_number("Duration (s)", duration, 0.0, slider_max)
        if duration <= 0:
            raise invalid(f"Duration (s) must be more than 0 and at most {slider_max:g}")
        return Settings(
            prompt=prompt.strip(),
            negative_prompt=(negative_prompt or "").strip() or None,
            seed=_check_number("Seed", seed, 0, MAX_SEED, integer=True),
            omega=_check_number("ω (omega)", omega, *OMEGA_RANGE),
            nu=_check_number("ν (nu)", nu, *NU_RANGE),
            gamma=_check_number("γ (gamma)", gamma, 0.0, 1.0),
            duration=min(duration, max_len),
            full_length=duration >= max_len,
        )

    def _generate(self, lazy: LazyPipeline, settings: Settings, steps: int):
        """One sound: (audio for gr.Audio, spectrogram, seconds the pipeline took)."""
        pipe = lazy.get()
        start = time.perf_counter()
        try:
            audio = lazy.run(num_inference_steps=steps, **settings.pipeline_kwargs(pipe._execution_device))[0]
        except (ValueError, TypeError) as err:
            raise invalid(html.escape(str(err))) from err
        elapsed = time.perf_counter() - start
        return (pipe.sampling_rate, to_int16(audio)), spectrogram_image(audio, pipe.sampling_rate), elapsed

    # ----------------------------------------------------------------------------------------- handlers
    def compare(self, prompt, negative_prompt, seed, omega, nu, gamma, duration, steps, progress=gr.Progress()):
        """
        The same seed through every chosen step count (and the teacher): per column (audio, spectrogram, time), then
        the settings text. `steps` is a list of step counts as strings, and "teacher". What the page's Generate and
        the `/compare` endpoint return: `compare_stream`'s updates merged (each later value replacing an earlier one).
        """
        outputs = None
        for update in self.compare_stream(prompt, negative_prompt, seed, omega, nu, gamma, duration, steps, progress):
            outputs = update if outputs is None else [old if _is_skip(new) else new for old, new in zip(outputs, update)]
        return outputs

    def compare_stream(self, prompt, negative_prompt, seed, omega, nu, gamma, duration, steps,
                       progress=gr.Progress()):
        """
        `compare` in three updates, so the 1-step draft is heard at once and the student's columns while the
        teacher still runs: after the first column (it also clears the columns of the previous result), before the
        teacher's (the columns finished since; the others are `gr.skip()`), and at the end (the columns not sent yet
        and the settings text: a column sent again would be encoded and sent again). An update per column cost more than it gave: each one's files and messages compete with the
        sampling for the CPU (benchmarks/bench_demo.py). Progress is reported per column: tracking the pipelines'
        tqdm bars too (110 updates a compare) slowed it through HTTP.
        """
        settings = self.settings(prompt, negative_prompt, seed, omega, nu, gamma, duration)
        if isinstance(steps, str):
            steps = [steps]
        chosen = [str(s) for s in steps or []]
        unknown = [s for s in chosen if s not in self.slots]
        if not chosen or unknown:
            raise invalid(f"Choose step counts among {', '.join(self.slots)}" + (f"; not {', '.join(map(html.escape, unknown))}" if unknown else ""))
        results, lines = {}, []
        todo = [s for s in self.slots if s in chosen]
        for i, slot in enumerate(todo):
            progress((i, len(todo)), desc=f"{self.slot_label(slot)} ({i + 1} of {len(todo)})")
            if slot == TEACHER:
                try:
                    heun_steps = self.teacher.get().default_num_inference_steps  # the folder's own: 40 unless it sets one
                    results[slot] = self._generate(self.teacher, settings, heun_steps)
                    lines.append("teacher: " + settings.command(heun_steps, self.teacher.model, "teacher.wav"))
                except gr.Error as err:  # the students' columns are still worth showing
                    gr.Warning(f"Teacher column skipped: {err.message}")
                    results[slot] = (None, None, f"not available: {err.message}")
            else:
                results[slot] = self._generate(self.student, settings, int(slot))
                lines.append(f"{self.slot_label(slot)}: " + settings.command(int(slot), self._model_arg(self.student), f"steps{slot}.wav"))
            if i == 0 and len(todo) > 1:
                yield self._compare_outputs(results, None)
                sent = {slot}
            elif i < len(todo) - 1 and todo[i + 1] == TEACHER:
                yield self._compare_outputs(results, None, only=set(results) - sent)
                sent = set(results)
        if len(todo) == 1:
            yield self._compare_outputs(results, settings.describe(lines))
        else:
            yield self._compare_outputs(results, settings.describe(lines), only=set(results) - sent)

    def _compare_outputs(self, results: dict, settings_text: str | None, only: set[str] | None = None) -> list:
        """The flat output list; with `only`, every other column is left as it is, and the settings too unless
        `settings_text` is given."""
        outputs = []
        for slot in self.slots:
            if only is not None and slot not in only:
                outputs += [gr.skip()] * 3
                continue
            audio, image, elapsed = results.get(slot, (None, None, None))
            outputs += [audio, image, self._time_text(slot, elapsed)]
        return outputs + [gr.skip() if settings_text is None and only is not None else settings_text]

    def drafts(self, prompt, negative_prompt, omega, nu, duration, count, progress=gr.Progress(track_tqdm=True)):
        """
        `count` 1-step drafts, each from its own random seed, in one batched pipeline call with one generator per
        draft (so each draft depends only on its seed). Per draft slot: (audio, spectrogram, seed).
        """
        count = _check_number("Number of drafts", count, 1, MAX_DRAFTS, integer=True)
        seeds = [secrets.randbelow(MAX_SEED + 1) for _ in range(count)]
        settings = self.settings(prompt, negative_prompt, 0, omega, nu, 0.0, duration)
        pipe = self.student.get()
        device = pipe._execution_device
        kwargs = settings.pipeline_kwargs(device)
        kwargs.update(num_inference_steps=1, num_waveforms_per_prompt=count,
                      generator=[torch.Generator(device).manual_seed(s) for s in seeds])
        progress(0, desc=f"{count} draft(s)")
        try:
            audios = self.student.run(**kwargs)
        except (ValueError, TypeError) as err:
            raise invalid(html.escape(str(err))) from err
        outputs = []
        for i in range(MAX_DRAFTS):
            if i < count:
                outputs += [(pipe.sampling_rate, to_int16(audios[i])), spectrogram_image(audios[i], pipe.sampling_rate), seeds[i]]
            else:
                outputs += [None, None, None]
        return outputs

    def refine(self, prompt, negative_prompt, seed, omega, nu, gamma, duration, steps,
               progress=gr.Progress(track_tqdm=True)):
        """The sound of `seed` with `steps` steps: (audio, spectrogram, time, settings text)."""
        settings = self.settings(prompt, negative_prompt, seed, omega, nu, gamma, duration)
        steps = _check_number("Steps", steps, 1, MAX_REFINE_STEPS, integer=True)
        progress(0, desc=f"{steps} step(s), seed {settings.seed}")
        audio, image, elapsed = self._generate(self.student, settings, steps)
        command = settings.command(steps, self._model_arg(self.student), f"seed{settings.seed}_steps{steps}.wav")
        return audio, image, self._time_text(str(steps), elapsed), settings.describe([command])

    def _time_text(self, slot: str, elapsed) -> str:
        if elapsed is None:
            return ""
        if isinstance(elapsed, str):
            return elapsed
        return f"{self.slot_label(slot)}: {elapsed:.2f} s"

    # ----------------------------------------------------------------------------------------- page
    def default_guidance_scale(self) -> float:
        """Where the ω sliders start: the loaded student's own ω (the paper's until it loads)."""
        pipe = self.student.loaded
        return float(pipe.default_guidance_scale) if pipe is not None else DEFAULT_GUIDANCE_SCALE

    def example_prompts(self) -> list[str]:
        """Prompts the loaded student knows (its model card's examples), else general sound-effect prompts."""
        pipe = self.student.loaded
        return (model_example_prompts(pipe) if pipe is not None else []) or EXAMPLES

    def model_text(self) -> str:
        teacher = f"`{self.teacher.model}`" if self.teacher else "none"
        pipe = self.student.loaded
        stereo = pipe is not None and int(pipe.vae.config.get("audio_channels", 1)) == 2
        audio = "" if pipe is None else (f" ({pipe.sampling_rate / 1000:g} kHz{' stereo' if stereo else ''}, "
                                         f"up to {pipe.max_audio_length_in_s:.1f} s)")
        return f"Model: `{self.student.model}`{audio} · teacher: {teacher}"

    def build(self, max_queue: int | None = 32, concurrency: int = 1) -> gr.Blocks:
        """The page. `max_queue` waiting requests at most (more are refused), `concurrency` generations at a time."""
        # ZeroGPU runs each handler in a process of its own (spaces.GPU); elsewhere one set of threads does all the
        # PyTorch work, loading included.
        if not ZERO_GPU and (self.compute is None or self.compute.workers != concurrency):
            if self.compute is not None:
                self.compute.shutdown()
            self.compute = ComputeThreads(concurrency)
        wrap = on_gpu if self.compute is None else self.compute.wrap
        for lazy in filter(None, (self.student, self.teacher)):
            try:  # load now so the page knows the model's length; a failure is shown in the page and retried there
                lazy.get() if self.compute is None else self.compute.call(lazy.get)
            except gr.Error as err:
                logger.error("%s", err.message)
        duration_step, duration_max = duration_slider(self.max_duration() or 10.0)
        compare_fn, drafts_fn, refine_fn = wrap(self.compare_stream), wrap(self.drafts), wrap(self.refine)
        compare_whole_fn = wrap(self.compare)
        queue = dict(concurrency_id="model", concurrency_limit=concurrency)

        with gr.Blocks(title="SoundCTM", delete_cache=(3600, 3600)) as demo:
            gr.Markdown(
                "# SoundCTM: text to sound in one step, refined with more\n"
                "Type what you want to hear. **Compare** plays the same seed with 1, 2, 4, ... steps side by side; "
                "**Drafts → refine** makes several quick 1-step drafts, and refines the one you pick.\n\n"
                + self.model_text()
            )
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", placeholder="a dog barks in the distance", scale=3, max_lines=3)
                negative = gr.Textbox(label="Negative prompt (optional)", value="", placeholder="what to avoid, e.g. noise", scale=2, max_lines=3)
            with gr.Row(equal_height=True):
                # No minimum/maximum here: the handlers check the seed and name it in their message.
                seed = gr.Number(label="Seed", value=0, precision=0, info=SEED_INFO, scale=2, elem_id="seed")
                random_seed = gr.Button("Random seed", scale=1, min_width=120)
                duration = gr.Slider(duration_step, duration_max, value=duration_max, step=duration_step, label="Duration (s)", scale=3,
                                     info="Length of the clip (the model makes at most this much).")
            with gr.Accordion("Guidance and noise", open=True):
                with gr.Row():
                    omega = gr.Slider(*OMEGA_RANGE, value=self.default_guidance_scale(), step=0.5, label="ω (omega): prompt strength", info=OMEGA_INFO)
                    nu = gr.Slider(*NU_RANGE, value=1.0, step=0.5, label="ν (nu): extra guidance", info=NU_INFO)
                    gamma = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="γ (gamma): fresh noise", info=GAMMA_INFO)
            gr.Examples(self.example_prompts(), inputs=prompt, label="Examples (click one to fill the prompt)")

            with gr.Tabs():
                with gr.Tab("Compare step counts"):
                    steps = gr.CheckboxGroup([(self.slot_label(s), s) for s in self.slots], value=list(self.slots),
                                             label="Step counts to compare (same seed for all)")
                    compare_button = gr.Button("Generate", variant="primary")
                    gr.Markdown(f"Spectrograms share one scale: {DB_RANGE[0]:g} to {DB_RANGE[1]:g} dB (full scale), "
                                f"{MEL_BANDS} mel bands up to half the sampling rate. The time is the pipeline's wall time."
                                + (" The teacher uses ω as its guidance scale; ν and γ apply to the student only." if self.teacher else ""))
                    compare_columns, compare_outputs = [], []
                    with gr.Row(equal_height=False):
                        for slot in self.slots:
                            with gr.Column(min_width=160, elem_classes="result-column", elem_id=f"compare-{slot}") as col:
                                gr.Markdown(f"**{self.slot_label(slot)}**")
                                compare_outputs += [
                                    gr.Audio(label=self.slot_label(slot), type="numpy", format="wav", interactive=False, buttons=["download"]),
                                    gr.Image(label="Spectrogram", type="numpy", format="png", interactive=False, show_label=False),
                                    gr.Markdown(label=f"Time, {self.slot_label(slot)}"),
                                ]
                            compare_columns.append(col)
                    compare_settings = gr.Textbox(label="Settings of this result (copy to reproduce with the CLI)", lines=4,
                                                  interactive=False, buttons=["copy"], elem_id="compare-settings")

                with gr.Tab("Drafts → refine"):
                    with gr.Row(equal_height=True):
                        count = gr.Slider(1, MAX_DRAFTS, value=4, step=1, label="Number of drafts", scale=3,
                                          info="1-step drafts, each from its own random seed, made in one batch.")
                        drafts_button = gr.Button("Make drafts", variant="primary", scale=1)
                    draft_columns, draft_outputs, draft_picks = [], [], []
                    with gr.Row(equal_height=False):
                        for i in range(MAX_DRAFTS):
                            with gr.Column(min_width=160, elem_classes="result-column", elem_id=f"draft-{i}", visible=i < 4) as col:
                                audio = gr.Audio(label=f"Draft {i + 1}", type="numpy", format="wav", interactive=False, buttons=["download"])
                                image = gr.Image(label="Spectrogram", type="numpy", format="png", interactive=False, show_label=False)
                                draft_seed = gr.Number(label="Seed", precision=0, interactive=False)
                                pick = gr.Button("Refine this draft", size="sm")
                            draft_outputs += [audio, image, draft_seed]
                            draft_columns.append(col)
                            draft_picks.append((pick, draft_seed))
                    with gr.Row(equal_height=True):
                        refine_steps = gr.Slider(1, MAX_REFINE_STEPS, value=16, step=1, label="Refine with this many steps", scale=3,
                                                 info="Uses the Seed field above (a picked draft puts its seed there).")
                        refine_button = gr.Button("Refine", variant="primary", scale=1)
                    with gr.Row():
                        with gr.Column(min_width=200, elem_id="refined"):
                            refined_audio = gr.Audio(label="Refined", type="numpy", format="wav", interactive=False, buttons=["download"])
                            refined_time = gr.Markdown(label="Time, refined")
                        refined_image = gr.Image(label="Spectrogram", type="numpy", format="png", interactive=False, show_label=False)
                    refine_settings = gr.Textbox(label="Settings of this result (copy to reproduce with the CLI)", lines=4,
                                                 interactive=False, buttons=["copy"], elem_id="refine-settings")

                # Loudness curve, bandwidth extension, audio -> audio (issue 7); endpoints /intensity, /bandwidth, /audio2audio.
                # Not for a model their pipelines cannot run (Stable Audio Open's): one tab says so instead.
                unsupported = editing_unsupported(self.student.loaded) if self.student.loaded is not None else None
                if unsupported:
                    with gr.Tab("Editing tools"):
                        gr.Markdown(unsupported, elem_id="editing-unsupported")
                else:
                    add_control_tabs(self.student.get, model_arg=self._model_arg(self.student), wrap=wrap,
                                     queue_kwargs=queue, guidance_scale=self.default_guidance_scale())

            # ----------------------------------------------------------------------------------------- events
            random_seed.click(lambda: secrets.randbelow(MAX_SEED + 1), outputs=seed, api_visibility="private", queue=False)
            steps.change(lambda chosen: [gr.Column(visible=s in (chosen or [])) for s in self.slots], inputs=steps,
                         outputs=compare_columns, api_visibility="private", queue=False)
            count.change(lambda n: [gr.Column(visible=i < int(n)) for i in range(MAX_DRAFTS)], inputs=count,
                         outputs=draft_columns, api_visibility="private", queue=False)
            # The columns fill in as they finish; the progress shows on the settings box, not over finished columns.
            # The page's stream is the `/compare_stream` endpoint (its updates leave what they do not change as it is);
            # `/compare` gives an API client the whole result in one reply.
            compare_inputs = [prompt, negative, seed, omega, nu, gamma, duration, steps]
            compare_button.click(compare_fn, inputs=compare_inputs, outputs=compare_outputs + [compare_settings],
                                 api_name="compare_stream", show_progress_on=compare_settings, **queue)
            gr.Button(visible=False).click(compare_whole_fn, inputs=compare_inputs, outputs=compare_outputs + [compare_settings],
                                           api_name="compare", **queue)
            prompt.submit(compare_fn, inputs=[prompt, negative, seed, omega, nu, gamma, duration, steps],
                          outputs=compare_outputs + [compare_settings], api_visibility="private",
                          show_progress_on=compare_settings, **queue)
            drafts_button.click(drafts_fn, inputs=[prompt, negative, omega, nu, duration, count], outputs=draft_outputs,
                                api_name="drafts", **queue)
            refine_inputs = [prompt, negative, seed, omega, nu, gamma, duration, refine_steps]
            refine_outputs = [refined_audio, refined_image, refined_time, refine_settings]
            refine_button.click(refine_fn, inputs=refine_inputs, outputs=refine_outputs, api_name="refine", **queue)
            for pick, draft_seed in draft_picks:
                pick.click(lambda s: s, inputs=draft_seed, outputs=seed, api_visibility="private", queue=False).then(
                    refine_fn, inputs=refine_inputs, outputs=refine_outputs, api_visibility="private", **queue)

        return demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)


# ------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help=f"student pipeline folder or Hub id, or a folder with student/ and teacher/ (default: ${ENV_MODEL}, else the bundled demo model)")
    parser.add_argument("--teacher", default=None,
                        help=f"teacher pipeline folder or Hub id (default: ${ENV_TEACHER}, else a teacher/ folder beside a local student)")
    parser.add_argument("--no-teacher", action="store_true", help="do not offer the teacher's column")
    parser.add_argument("--steps", default=",".join(map(str, STEP_CHOICES)),
                        help="step counts offered in Compare, comma-separated (default: 1,2,4,8,16)")
    parser.add_argument("--host", default=None, help="address to serve on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else the first free from 7860)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model dtype (default fp32)")
    parser.add_argument("--concurrency", type=int, default=1, help="generations run at the same time (default 1)")
    parser.add_argument("--max-queue", type=int, default=32, help="requests that may wait; more are refused (default 32)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        try:
            step_choices = tuple(int(s) for s in args.steps.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"--steps must be step counts separated by commas, such as 1,2,4,8,16; got {args.steps!r}") from None
        if args.concurrency < 1 or args.max_queue < 1:
            raise ValueError(f"--concurrency and --max-queue must be at least 1, got {args.concurrency} and {args.max_queue}")
        student, teacher = resolve_models(args.model, args.teacher, use_teacher=not args.no_teacher)
        app = SoundCTMApp(student, teacher, args.device, args.dtype, step_choices)
    except ValueError as err:
        print(f"app.py: error: {err}", file=sys.stderr)
        return 2
    demo = app.build(max_queue=args.max_queue, concurrency=args.concurrency)
    demo.launch(server_name=args.host, server_port=args.port, css=CSS, **LAUNCH_KWARGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
