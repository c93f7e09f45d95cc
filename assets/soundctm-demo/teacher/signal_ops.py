"""Waveform operations of the editing pipelines: input checking, resampling, the low-pass observation of bandwidth
extension, and the log-spectral distance.

- `resample`: band-limited resampling by a Kaiser-windowed sinc, polyphase, in torch (so the package needs no soxr).
- `lowpass`: the observation operator A of bandwidth extension, an ideal (brick-wall) low-pass in the DFT domain. It is
  a projection (A·A = A), which is what makes the data-consistency step x̃ = y + (x − A·x) keep the observed band
  exactly (Moliner et al., 2023).
- `prepare_input_audio`: any user waveform → `(batch, 1, samples)` float32 at the model's rate, with every conversion
  stated and bad input (empty, silent, non-finite, too long) a ValueError.
- `log_spectral_distance`: LSD between STFT log-power spectra (the bandwidth-extension metric of the paper's Table 14).

This file imports only torch and numpy so that diffusers' dynamic loader can copy it beside a pipeline file.
"""

import math

import numpy as np
import torch

SILENCE_PEAK = 1e-4
MAX_CHANNELS = 8


def resample(
    audio: torch.Tensor,
    orig_sr: int,
    new_sr: int,
    zero_crossings: int = 24,
    rolloff: float = 0.945,
    beta: float = 9.0,
) -> torch.Tensor:
    """
    Resamples `(..., samples)` from `orig_sr` to `new_sr` Hz: `(..., ceil(samples · new_sr / orig_sr))`.

    Each output sample is a Kaiser-windowed (β = `beta`) sinc interpolation of the input with `zero_crossings` lobes
    per side, low-passed at `rolloff` times the lower Nyquist frequency. The rate ratio is reduced to up/down by
    their gcd; the `up` phases of the filter are one strided convolution.
    """
    for name, rate in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"{name} must be a positive integer sampling rate in Hz, got {rate!r}")
    if orig_sr == new_sr:
        return audio
    gcd = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // gcd, int(orig_sr) // gcd
    # Cut-off in cycles per input sample, below both Nyquist frequencies.
    cutoff = 0.5 * rolloff * min(1.0, up / down)
    width = int(math.ceil(zero_crossings / (2 * cutoff)))  # half-length of the filter, in input samples

    # Output sample m = q·up + j sits at input position q·down + j·down/up; tap n reads input sample q·down + n.
    phases = torch.arange(up, dtype=torch.float64)[:, None] * down / up
    taps = torch.arange(-width, width + down + 1, dtype=torch.float64)[None, :]
    offset = phases - taps
    ratio = (offset / width).clamp(-1.0, 1.0)
    window = torch.special.i0(beta * torch.sqrt(1.0 - ratio**2)) / torch.special.i0(torch.tensor(beta, dtype=torch.float64))
    window = torch.where(offset.abs() <= width, window, torch.zeros_like(window))
    kernel = 2 * cutoff * torch.sinc(2 * cutoff * offset) * window  # unit DC gain: Σ_n over any phase ≈ 1
    kernel = kernel.to(audio.dtype if audio.is_floating_point() else torch.float32).to(audio.device)

    lead, num_samples = audio.shape[:-1], audio.shape[-1]
    out_len = -(-num_samples * up // down)
    num_blocks = -(-out_len // up)
    flat = audio.reshape(-1, 1, num_samples).to(kernel.dtype)
    right = max(0, (num_blocks - 1) * down + kernel.shape[-1] - (num_samples + width))
    flat = torch.nn.functional.pad(flat, (width, right))
    blocks = torch.nn.functional.conv1d(flat, kernel[:, None, :], stride=down)  # (batch, up, blocks)
    out = blocks.transpose(1, 2).reshape(flat.shape[0], -1)[:, :out_len]
    return out.reshape(*lead, out_len)


def check_cutoff(cutoff_hz, sampling_rate: int, name: str = "cutoff_hz") -> float:
    """`cutoff_hz` as a float in (0, sampling_rate / 2); ValueError otherwise."""
    nyquist = sampling_rate / 2
    if isinstance(cutoff_hz, bool) or not isinstance(cutoff_hz, (int, float, np.number)) or not 0 < cutoff_hz < nyquist:
        raise ValueError(f"`{name}` must be a frequency in (0, {nyquist:g}) Hz (below Nyquist), got {cutoff_hz!r}")
    return float(cutoff_hz)


def lowpass(audio: torch.Tensor, cutoff_hz: float, sampling_rate: int) -> torch.Tensor:
    """A·x: keeps the DFT bins at or below `cutoff_hz` of `(..., samples)` and zeroes the rest (a projection)."""
    num_samples = audio.shape[-1]
    spectrum = torch.fft.rfft(audio.float(), dim=-1)
    freqs = torch.fft.rfftfreq(num_samples, d=1.0 / sampling_rate).to(audio.device)
    spectrum = spectrum * (freqs <= cutoff_hz).to(spectrum.dtype)
    return torch.fft.irfft(spectrum, n=num_samples, dim=-1).to(audio.dtype)


def prepare_input_audio(
    audio,
    sampling_rate: int | None,
    target_rate: int,
    max_samples: int | None = None,
    name: str = "audio",
) -> tuple[torch.Tensor, list[str]]:
    """
    A user's waveform as `(batch, 1, samples)` float32 at `target_rate`, and the conversions made (one sentence each).

    Args:
        audio: `np.ndarray`, `torch.Tensor` or list: `(samples,)` one mono clip, `(channels, samples)` one clip
            (channels are averaged to mono), or `(batch, channels, samples)`. Integer PCM is scaled to [-1, 1].
        sampling_rate: rate of `audio` in Hz; `None` means it is already at `target_rate`. Other rates are resampled.
        max_samples: longest accepted clip at `target_rate` (the model's length); longer is a ValueError.
    """
    notes = []
    if isinstance(audio, torch.Tensor):
        array = audio.detach().cpu()
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
    elif isinstance(audio, (np.ndarray, list, tuple)):
        array = np.asarray(audio)
    else:
        raise TypeError(f"`{name}` must be a numpy array, a torch tensor or a list of samples, got {type(audio).__name__}")
    if array.dtype.kind in "iu":
        full_scale = (float(np.iinfo(array.dtype).max) + 1.0) / (2.0 if array.dtype.kind == "u" else 1.0)
        offset = full_scale if array.dtype.kind == "u" else 0.0  # unsigned PCM (8-bit WAV) is centred on half scale
        notes.append(f"{name}: integer PCM ({array.dtype}) scaled to [-1, 1]")
        array = (array.astype(np.float64) - offset) / full_scale
    elif array.dtype.kind != "f":
        raise TypeError(f"`{name}` must hold numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"`{name}` is empty (0 samples)")
    if array.ndim == 1:
        array = array[None, None]
    elif array.ndim == 2:
        array = array[None]
    elif array.ndim != 3:
        raise ValueError(f"`{name}` must be (samples,), (channels, samples) or (batch, channels, samples), got shape {array.shape}")
    if array.shape[1] > MAX_CHANNELS:
        raise ValueError(
            f"`{name}` has {array.shape[1]} channels and {array.shape[-1]} samples; audio is (channels, samples) — "
            "transpose a (samples, channels) array such as soundfile returns"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite samples")
    if array.shape[1] > 1:
        notes.append(f"{name}: {array.shape[1]} channels averaged to mono")
        array = array.mean(axis=1, keepdims=True)
    waveform = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    if sampling_rate is not None and sampling_rate != target_rate:
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive integer in Hz, got {sampling_rate!r}")
        waveform = resample(waveform, int(sampling_rate), int(target_rate))
        notes.append(f"{name}: resampled from {sampling_rate} Hz to {target_rate} Hz")
    if max_samples is not None and waveform.shape[-1] > max_samples:
        excess = waveform.shape[-1] - max_samples
        if excess <= target_rate // 1000:  # rounding of a resampled clip of exactly the model's length
            waveform = waveform[..., :max_samples]
            notes.append(f"{name}: last {excess} sample(s) dropped to fit the model's {max_samples} samples")
        else:
            raise ValueError(
                f"`{name}` is {waveform.shape[-1] / target_rate:.2f} s long; this model handles at most "
                f"{max_samples / target_rate:.2f} s — cut it first"
            )
    peak = waveform.abs().amax(dim=(1, 2))
    if bool((peak < SILENCE_PEAK).any()):
        raise ValueError(f"`{name}` is silent (peak below {SILENCE_PEAK:g}); give a recording with sound in it")
    return waveform, notes


def log_spectral_distance(
    estimate: torch.Tensor,
    reference: torch.Tensor,
    n_fft: int = 2048,
    hop_length: int = 512,
    eps: float = 1e-10,
) -> torch.Tensor:
    """
    LSD per clip, `(batch,)`: mean over STFT frames of sqrt(mean over frequency of
    (log10 |X_ref|² − log10 |X_est|²)²) (Wang and Wang, 2021), Hann window `n_fft`, hop `hop_length`.
    Inputs are `(batch, samples)` or `(batch, channels, samples)` (channels averaged).
    """
    spectra = []
    for audio in (estimate, reference):
        audio = audio.float()
        if audio.ndim == 3:
            audio = audio.mean(1)
        window = torch.hann_window(n_fft, device=audio.device)
        stft = torch.stft(audio, n_fft, hop_length, window=window, center=True, pad_mode="constant", return_complex=True)
        spectra.append(torch.log10(stft.abs().pow(2) + eps))
    per_frame = (spectra[1] - spectra[0]).pow(2).mean(dim=-2).sqrt()
    return per_frame.mean(dim=-1)
