"""Sound intensity: the differentiable feature f(x₀) of SoundCTM's intensity control (Appendix D.3) and target curves.

    f(x₀) = w * 20·log10(RMS(x₀))

frame-wise RMS energy in dB, smoothed over time by a Savitzky–Golay filter w with a 1-second window (Savitzky and
Golay, 1964), as DITTO does for intensity control. The filter is linear, so it is a fixed matrix of least-squares
coefficients: a convolution in the interior plus the polynomial fits of scipy's default `mode="interp"` at both edges;
gradients flow through it to the waveform. The loss against a target dB curve y_condition is the MSE in dB.

Target curves are presets (`INTENSITY_PRESETS`: flat, rising, falling, swell, dip, pulses, steps) spanning a dB range,
or a user's own list of dB values spread evenly over the clip and linearly resampled to the frame rate.

This file imports only torch and numpy so that diffusers' dynamic loader can copy it beside a pipeline file.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch

INTENSITY_PRESETS = ("flat", "rising", "falling", "swell", "dip", "pulses", "steps")
DEFAULT_RANGE_DB = (-40.0, -15.0)
# 20·log10 of an RMS below this is floored (−100 dB): silence must not give −inf or an infinite gradient.
_POWER_FLOOR = 1e-10


def savgol_matrix(window_length: int, polyorder: int) -> np.ndarray:
    """
    The Savitzky–Golay smoothing matrix P (window_length × window_length), float64: P @ x = values at every point of
    the window of the least-squares polynomial of degree `polyorder` through the window's samples x. Row
    `window_length // 2` holds the convolution coefficients of the interior (as `scipy.signal.savgol_coeffs`); the rows
    before and after it give the edge values of scipy's `mode="interp"`.
    """
    if window_length % 2 != 1 or window_length < 1:
        raise ValueError(f"window_length must be a positive odd integer, got {window_length}")
    if not 0 <= polyorder < window_length:
        raise ValueError(f"polyorder must be in [0, window_length), got {polyorder} for window_length {window_length}")
    half = window_length // 2
    # Centred positions keep the Vandermonde matrix well conditioned.
    positions = np.arange(-half, half + 1, dtype=np.float64) / max(half, 1)
    vandermonde = positions[:, None] ** np.arange(polyorder + 1)[None, :]
    return vandermonde @ np.linalg.pinv(vandermonde)


class SavitzkyGolay(torch.nn.Module):
    """
    Differentiable Savitzky–Golay smoothing along the last axis, equal to `scipy.signal.savgol_filter(x,
    window_length, polyorder)` (deriv 0, `mode="interp"`). Needs at least `window_length` points.
    """

    def __init__(self, window_length: int, polyorder: int):
        super().__init__()
        matrix = torch.from_numpy(savgol_matrix(window_length, polyorder))  # float64; cast to the input dtype on use
        half = window_length // 2
        self.window_length = window_length
        self.polyorder = polyorder
        # Interior: y[i] = Σ_j P[half, j] · x[i − half + j], a correlation, which is what conv1d computes.
        self.register_buffer("kernel", matrix[half].reshape(1, 1, -1).contiguous(), persistent=False)
        self.register_buffer("head", matrix[:half].contiguous(), persistent=False)
        self.register_buffer("tail", matrix[half + 1 :].contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        if n < self.window_length:
            raise ValueError(f"the signal has {n} points, fewer than the filter's window_length {self.window_length}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, 1, n)
        interior = torch.nn.functional.conv1d(flat, self.kernel.to(x.dtype)).squeeze(1)
        head = flat[:, 0, : self.window_length] @ self.head.to(x.dtype).T
        tail = flat[:, 0, -self.window_length :] @ self.tail.to(x.dtype).T
        return torch.cat([head, interior, tail], dim=-1).reshape(*lead, n)


class IntensityFeature(torch.nn.Module):
    """
    f(x₀): frame-wise RMS in dB (frames of `frame_length` samples every `hop_length`, centred, reflect-padded), smoothed
    by a Savitzky–Golay filter whose window covers `smoothing_s` seconds of frames (1 s in the paper; rounded to an odd
    number of frames, and shortened to fit clips shorter than the window).

    `forward(audio (batch, channels, samples) or (batch, samples)) -> (batch, frames)` dB; channels are averaged.
    """

    def __init__(
        self,
        sampling_rate: int,
        frame_length: int = 2048,
        hop_length: int = 512,
        smoothing_s: float = 1.0,
        polyorder: int = 3,
    ):
        super().__init__()
        if frame_length < 1 or hop_length < 1:
            raise ValueError(f"frame_length and hop_length must be >= 1, got {frame_length}, {hop_length}")
        self.sampling_rate = int(sampling_rate)
        self.frame_length = int(frame_length)
        self.hop_length = int(hop_length)
        self.smoothing_s = float(smoothing_s)
        self.polyorder = int(polyorder)
        self._filters: dict[int, SavitzkyGolay] = {}

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def window_length(self, num_frames: int) -> int:
        """The odd number of frames closest to `smoothing_s` seconds, at most `num_frames`."""
        window = min(int(round(self.smoothing_s * self.frame_rate)), num_frames)
        return max(window - (1 - window % 2), 1)

    def frame_db(self, audio: torch.Tensor) -> torch.Tensor:
        """Unsmoothed 20·log10(RMS) per frame, `(batch, frames)`."""
        if audio.ndim == 3:
            audio = audio.mean(1)
        if audio.ndim != 2:
            raise ValueError(f"audio must be (batch, channels, samples) or (batch, samples), got {tuple(audio.shape)}")
        pad = self.frame_length // 2
        mode = "reflect" if audio.shape[-1] > pad else "constant"
        padded = torch.nn.functional.pad(audio[:, None], (pad, pad), mode=mode)[:, 0]
        frames = padded.unfold(-1, self.frame_length, self.hop_length)
        power = frames.float().pow(2).mean(-1)
        return 10.0 * torch.log10(power + _POWER_FLOOR)  # = 20·log10(RMS)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        db = self.frame_db(audio)
        num_frames = db.shape[-1]
        window = self.window_length(num_frames)
        if window not in self._filters:
            # A window too short for the polynomial degree (very short clips) fits a lower degree.
            self._filters[window] = SavitzkyGolay(window, min(self.polyorder, window - 1))
        return self._filters[window].to(db.device)(db)


def preset_curve(name: str, num_frames: int, range_db: tuple[float, float] = DEFAULT_RANGE_DB) -> np.ndarray:
    """One of `INTENSITY_PRESETS` over `num_frames` frames between `range_db = (low, high)` dB."""
    low, high = _check_range(range_db)
    u = np.linspace(0.0, 1.0, num_frames)
    span = high - low
    if name == "flat":
        shape = np.full(num_frames, 0.5)
    elif name == "rising":
        shape = u
    elif name == "falling":
        shape = 1.0 - u
    elif name == "swell":  # up then down
        shape = np.sin(np.pi * u)
    elif name == "dip":  # down then up
        shape = 1.0 - np.sin(np.pi * u)
    elif name == "pulses":  # three swells
        shape = 0.5 - 0.5 * np.cos(2 * np.pi * 3 * u)
    elif name == "steps":  # three plateaus, quiet to loud
        shape = np.minimum(np.floor(u * 3), 2) / 2
    else:
        raise ValueError(f"unknown intensity preset {name!r}; choose one of {INTENSITY_PRESETS} or give dB values")
    return low + span * shape


def target_curve(
    curve: str | Sequence[float] | np.ndarray | torch.Tensor,
    num_frames: int,
    range_db: tuple[float, float] = DEFAULT_RANGE_DB,
) -> torch.Tensor:
    """
    The target y_condition in dB per frame, `(num_frames,)` float32.

    Args:
        curve: a preset name (`INTENSITY_PRESETS`), or at least 2 finite dB values (a sequence, or text such as
            "-40,-10,-40") spread evenly from the start to the end of the clip (linearly interpolated to the frame rate).
        num_frames: frames of the clip (`IntensityFeature.num_frames(samples)`).
        range_db: (low, high) dB that a preset spans; ignored for user values.
    """
    if isinstance(curve, str):
        curve = parse_curve(curve)
    if isinstance(curve, str):
        return torch.from_numpy(preset_curve(curve, num_frames, range_db)).float()
    values = parse_db_values(curve)
    knots = np.linspace(0.0, 1.0, len(values))
    return torch.from_numpy(np.interp(np.linspace(0.0, 1.0, num_frames), knots, values)).float()


def parse_db_values(curve) -> np.ndarray:
    """A user's dB curve as float64 values; ValueError unless it is at least 2 finite numbers (a 1-D sequence)."""
    if isinstance(curve, str):
        try:
            curve = [float(v) for v in curve.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"intensity curve {curve!r} is neither a preset ({', '.join(INTENSITY_PRESETS)}) nor comma-separated "
                "dB values such as '-40,-10,-40'"
            ) from None
    if isinstance(curve, torch.Tensor):
        curve = curve.detach().cpu().numpy()
    try:
        values = np.asarray(curve, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"an intensity curve must be a preset name or a list of dB values, got {type(curve).__name__}") from None
    if values.ndim != 1:
        raise ValueError(f"an intensity curve must be a 1-D list of dB values, got shape {values.shape}")
    if len(values) < 2:
        raise ValueError(f"an intensity curve needs at least 2 dB values (start and end), got {len(values)}")
    if not np.isfinite(values).all():
        raise ValueError("an intensity curve must hold finite dB values; it contains NaN or infinity")
    if values.max() > 0.0:
        # Output audio is clipped to [-1, 1]: its RMS is at most 0 dB full scale.
        raise ValueError(f"intensity curve values are dB relative to full scale and must be <= 0, got {values.max():g}")
    return values


def parse_curve(curve: str):
    """CLI/app text: a preset name stays a str; anything else must be comma-separated dB values."""
    name = curve.strip().lower()
    return name if name in INTENSITY_PRESETS else parse_db_values(curve)


class IntensityLoss(torch.nn.Module):
    """L(f(x₀), y_condition) = mean over frames of (f(x₀) − y)² in dB², one value per waveform: `(batch,)`."""

    def __init__(self, target_db: torch.Tensor, feature: IntensityFeature):
        super().__init__()
        self.feature = feature
        self.register_buffer("target_db", torch.as_tensor(target_db, dtype=torch.float32), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        achieved = self.feature(audio)
        target = self.target_db.to(achieved.device)
        if target.shape[-1] != achieved.shape[-1]:
            raise ValueError(f"the target curve has {target.shape[-1]} frames, the audio {achieved.shape[-1]}")
        return (achieved - target).pow(2).mean(-1)


def intensity_loss(
    curve,
    num_samples: int,
    sampling_rate: int,
    range_db: tuple[float, float] = DEFAULT_RANGE_DB,
    **feature_kwargs,
) -> IntensityLoss:
    """The intensity-control loss for clips of `num_samples` samples: target curve + feature, ready for guidance."""
    feature = IntensityFeature(sampling_rate, **feature_kwargs)
    return IntensityLoss(target_curve(curve, feature.num_frames(num_samples), range_db), feature)


def _check_range(range_db) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in range_db)
    except (TypeError, ValueError):
        raise ValueError(f"range_db must be two numbers (low, high) in dB, got {range_db!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high <= 0.0:
        raise ValueError(f"range_db must be finite dB full scale with low < high <= 0, got ({low}, {high})")
    return low, high
