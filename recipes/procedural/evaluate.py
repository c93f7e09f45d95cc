"""Analytic evaluator for the procedural sounds: signal processing only (numpy/scipy), no learned network.

`measure(audio)` reads physical quantities off a clip's short-time spectrum (23 ms Hann frames, 5.8 ms hop):

    pulsed_fraction   share of frames more than 15 dB below the loudest frame within 0.6 s (gaps between pulses)
    pulse_rate_hz     pulse onsets per second (hysteresis on that same local-peak distance)
    pitch_jitter      median second difference of log2 f_peak over frames 23 ms apart, in octaves: ~0 for a
                      tone (even a gliding one), large for noise, whose spectral peak wanders at random
    pitch_hz          median spectral peak frequency of the sounding frames
    glide_oct_s       median pitch change within pulses, octaves per second (chirps glide, beeps do not)
    trend_oct, trend_r the pitch track's least-squares change over the clip (octaves) and correlation with time
    fm_rate_hz        how many times a second the pitch track swings up and down (siren speed)
    pitch_range_oct   5-95 % spread of the pitch track
    centroid_hz       energy-weighted spectral centroid
    fade_db           level of the last quarter minus the first quarter (median frame levels)
    level_db, peak_dbfs  95th-percentile frame level, and the sample peak (below -50 dBFS a clip is silence)

`classify` turns them into the attribute values of `sounds.py` with fixed thresholds placed between the
ranges the generator draws from; `score` compares them with what a prompt asks for (`accuracy`: every attribute;
`attribute_accuracy`: the share of attributes). `features` is a fixed
hand-crafted vector (band levels, their variation, and the measurements above, each scaled to order 1) for
`frechet_distance`, and `content_distance` compares two clips frame by frame (log-mel spectrogram, dB, top 40 dB).
"""

import numpy as np
from scipy import linalg
from scipy.ndimage import maximum_filter1d, uniform_filter1d

from .sounds import SAMPLING_RATE, SOURCES, parse_prompt

N_FFT, HOP = 1024, 256
FRAME_RATE = SAMPLING_RATE / HOP
FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLING_RATE)

# Thresholds between the generator's ranges (see sounds.py): geometric midpoints where the quantity is a ratio.
PULSED_FRACTION = 0.2
PULSE_RATE_HZ = 3.4  # slow 1.6-2.4 / s, fast 5.0-6.5 / s
TONAL_JITTER_OCT = 0.2
GLIDE_OCT_S = 3.0  # chirps glide ~8-15 oct/s, beeps 0
SWEEP_R, SWEEP_OCT = 0.8, 1.5  # sweeps glide 3-4 octaves monotonically
SIREN_RANGE_OCT = 0.4
FM_RATE_HZ = 1.4  # siren slow 0.4-0.7 Hz, fast 3-4 Hz
PITCH_EDGES_HZ = (335.0, 1270.0)  # low 120-250, mid 450-900, high 1800-3600
KNOCK_CENTROID_HZ = 1500.0
COLOUR_EDGES_HZ = (600.0, 5500.0)  # rumble < 200 Hz, rain ~2-3 kHz, hiss ~10 kHz
FADE_DB = 12.0  # fades are 30-40 dB deep
SILENCE_DBFS = -50.0  # clips peak at -10 to -2 dBFS


def _as_mono(audio) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 2:  # (channels, samples)
        audio = audio.mean(0)
    if audio.ndim != 1 or audio.size < N_FFT:
        raise ValueError(f"audio must be a mono clip (samples,) or (channels, samples) of at least {N_FFT} samples")
    return audio


def power_spectrogram(audio) -> np.ndarray:
    """|STFT|² of Hann frames, shape (frames, N_FFT // 2 + 1)."""
    audio = _as_mono(audio)
    frames = np.lib.stride_tricks.sliding_window_view(audio, N_FFT)[::HOP]
    return np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=-1)) ** 2


def _peak_frequencies(power: np.ndarray) -> np.ndarray:
    """Spectral peak of every frame, refined by a parabola through the log power around the peak bin."""
    k = np.clip(power[:, 1:].argmax(1) + 1, 1, power.shape[1] - 2)
    rows = np.arange(len(k))
    a, b, c = (np.log(power[rows, k + d] + 1e-20) for d in (-1, 0, 1))
    offset = np.clip(0.5 * (a - c) / (a - 2 * b + c - 1e-12), -0.5, 0.5)
    return (k + offset) * SAMPLING_RATE / N_FFT


def _rising_edges(on: np.ndarray) -> int:
    return int(np.sum(on[1:] & ~on[:-1]) + on[0])


def _hysteresis(values: np.ndarray, on_below: float, off_above: float) -> np.ndarray:
    state, out = False, np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        state = v < on_below if not state else v <= off_above
        out[i] = state
    return out


def measure(audio) -> dict:
    """Physical measurements of one clip (see the module docstring)."""
    power = power_spectrogram(audio)
    level_db = 10 * np.log10(power.sum(1) + 1e-12)
    sounding = level_db > level_db.max() - 30.0
    duration = len(level_db) / FRAME_RATE

    # Distance below the loudest frame within 0.6 s (levels smoothed over 3 hops): ~0 for steady or fading sounds,
    # large in the gaps between pulses.
    smooth_db = 10 * np.log10(np.maximum(uniform_filter1d(power.sum(1), 3), 0.0) + 1e-12)
    local_peak = maximum_filter1d(smooth_db, int(0.6 * FRAME_RATE))
    below_local_peak = local_peak - smooth_db
    considered = local_peak > smooth_db.max() - 40.0
    pulsed_fraction = float(np.mean(below_local_peak[considered] > 15.0))
    in_pulse = _hysteresis(np.where(considered, below_local_peak, 99.0), 8.0, 14.0)
    pulse_rate = _rising_edges(in_pulse) / duration

    # A tone's pitch track is smooth (even when it glides), the spectral peak of noise jumps at random: the
    # second difference of log2 f_peak over frames 23 ms apart (no overlap).
    f_peak = _peak_frequencies(power)
    log_f = np.log2(np.maximum(f_peak, 1.0))
    lag = N_FFT // HOP
    triples = sounding[2 * lag :] & sounding[lag:-lag] & sounding[: -2 * lag]
    curvature = np.abs(log_f[2 * lag :] - 2 * log_f[lag:-lag] + log_f[: -2 * lag])
    pitch_jitter = float(np.median(curvature[triples])) if triples.sum() > 4 else 9.0
    pairs = sounding[1:] & sounding[:-1]
    steps = np.diff(log_f)
    loud = sounding & (below_local_peak < 6.0)
    pitch_hz = float(2 ** np.median(log_f[loud])) if loud.any() else 0.0
    in_pulse_pairs = in_pulse[1:] & in_pulse[:-1] & pairs
    glide = float(np.median(steps[in_pulse_pairs]) * FRAME_RATE) if in_pulse_pairs.sum() > 2 else 0.0

    times = np.arange(len(log_f)) / FRAME_RATE
    t_s, f_s = times[sounding], log_f[sounding]
    if len(t_s) > 2 and f_s.std() > 1e-9:
        trend_r = float(np.corrcoef(t_s, f_s)[0, 1])
        trend_oct = float(np.polyfit(t_s, f_s, 1)[0] * (t_s[-1] - t_s[0]))
        pitch_range = float(np.percentile(f_s, 95) - np.percentile(f_s, 5))
        smooth = uniform_filter1d(f_s, max(1, int(0.05 * FRAME_RATE)))
        swings = _hysteresis(-(smooth - np.median(smooth)), -0.15, 0.15)  # True while above the median
        fm_rate = float(np.sum(swings[1:] != swings[:-1])) / 2 / duration
    else:
        trend_r = trend_oct = pitch_range = fm_rate = 0.0

    spectrum = power[sounding].sum(0)
    centroid = float((spectrum * FREQS).sum() / (spectrum.sum() + 1e-20))
    edge = int(0.05 * FRAME_RATE)
    quarter = max(1, (len(level_db) - 2 * edge) // 4)
    fade_db = float(np.median(level_db[-edge - quarter : -edge]) - np.median(level_db[edge : edge + quarter]))
    return {
        "pulsed_fraction": pulsed_fraction,
        "pulse_rate_hz": pulse_rate,
        "pitch_jitter": pitch_jitter,
        "pitch_hz": pitch_hz,
        "glide_oct_s": glide,
        "trend_oct": trend_oct,
        "trend_r": trend_r,
        "fm_rate_hz": fm_rate,
        "pitch_range_oct": pitch_range,
        "centroid_hz": centroid,
        "fade_db": fade_db,
        "level_db": float(np.percentile(level_db, 95)),
        "peak_dbfs": float(20 * np.log10(np.abs(_as_mono(audio)).max() + 1e-12)),
    }


def _source_and_values(m: dict) -> tuple[str, dict]:
    """The detected source and every attribute value read off `measure`'s output, whatever the source."""
    if m["peak_dbfs"] < SILENCE_DBFS:
        return "silence", {}
    tonal = m["pitch_jitter"] < TONAL_JITTER_OCT
    if m["pulsed_fraction"] > PULSED_FRACTION:
        if tonal:
            source = "chirps" if m["glide_oct_s"] > GLIDE_OCT_S else "beeps"
        else:
            source = "knocks" if m["centroid_hz"] < KNOCK_CENTROID_HZ else "clicks"
    elif tonal:
        if abs(m["trend_r"]) > SWEEP_R and abs(m["trend_oct"]) > SWEEP_OCT:
            source = "sweep"
        elif m["pitch_range_oct"] > SIREN_RANGE_OCT:
            source = "siren"
        else:
            source = "tone"
    else:
        source = "noise"
    values = {
        "pitch": "low" if m["pitch_hz"] < PITCH_EDGES_HZ[0] else "mid" if m["pitch_hz"] < PITCH_EDGES_HZ[1] else "high",
        "envelope": "fade_in" if m["fade_db"] > FADE_DB else "fade_out" if m["fade_db"] < -FADE_DB else "steady",
        "rate": "fast" if (m["fm_rate_hz"] > FM_RATE_HZ if source == "siren" else m["pulse_rate_hz"] > PULSE_RATE_HZ) else "slow",
        "direction": "up" if m["trend_oct"] > 0 else "down",
        "colour": "rumble" if m["centroid_hz"] < COLOUR_EDGES_HZ[0] else "rain" if m["centroid_hz"] < COLOUR_EDGES_HZ[1] else "hiss",
    }
    return source, values


def classify(m: dict) -> dict:
    """Attribute values (as in sounds.py) from `measure`'s output; every attribute of the detected source is set.
    A clip whose peak is below SILENCE_DBFS is {"source": "silence"} and matches no prompt."""
    source, values = _source_and_values(m)
    return {"source": source, **{a: values[a] for a in SOURCES.get(source, ())}}


def score(audio, prompt) -> tuple[bool, dict]:
    """
    Does `audio` sound like `prompt`? `prompt` is text (parsed with `sounds.parse_prompt`) or an attribute dict.
    Returns (every attribute the prompt names matches, the attributes measured in the clip).
    """
    return score_measured(measure(audio), prompt)


def score_measured(m: dict, prompt) -> tuple[bool, dict]:
    """`score` from a clip's `measure` output, for callers that also keep the measurements."""
    wanted = parse_prompt(prompt) if isinstance(prompt, str) else dict(prompt)
    got = classify(m)
    ok = all(got.get(k) == v for k, v in wanted.items() if v is not None)
    return ok, got


def accuracy(clips, prompts) -> float:
    """Share of clips that match their prompt (strict: source and every named attribute)."""
    if len(clips) != len(prompts) or not clips:
        raise ValueError(f"need as many prompts as clips (> 0), got {len(clips)} clips and {len(prompts)} prompts")
    return float(np.mean([score(c, p)[0] for c, p in zip(clips, prompts)]))


def attribute_accuracy(clips, prompts) -> float:
    """A softer score than `accuracy`: per clip, the share of the attributes its prompt names (the source counts as one)
    that are measured in it (each read as `classify` reads it, whatever source was detected), averaged over clips. It shows
    partial adherence: a steady low tone answered by a steady noise of low pitch scores 0 on `accuracy` and 2/3 here."""
    if len(clips) != len(prompts) or not clips:
        raise ValueError(f"need as many prompts as clips (> 0), got {len(clips)} clips and {len(prompts)} prompts")
    shares = []
    for clip, prompt in zip(clips, prompts):
        wanted = {k: v for k, v in parse_prompt(prompt).items() if v is not None}
        source, values = _source_and_values(measure(clip))
        got = {**values, "source": source}  # each attribute read as if the source were the prompt's
        shares.append(np.mean([got.get(k) == v for k, v in wanted.items()]))
    return float(np.mean(shares))


def mean_level_db(clips) -> float:
    """The clips' mean power, in dB re full scale."""
    return float(10 * np.log10(np.mean([np.mean(np.square(c)) for c in clips]) + 1e-12))


def full_scale_share(clips) -> float:
    """Share of clips whose peak reaches full scale (the pipelines clamp to [-1, 1], so these clipped)."""
    return float(np.mean([np.abs(c).max() >= 0.999 for c in clips]))


# ------------------------------------------------------------------------------------------------ distances
def mel_filterbank(n_mels: int, n_fft: int = N_FFT, f_min: float = 40.0, f_max: float = 20000.0) -> np.ndarray:
    """Triangular filters equally spaced on the mel scale from f_min to f_max, shape (n_mels, n_fft // 2 + 1)."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLING_RATE)
    edges = 700 * (10 ** (np.linspace(mel(f_min), mel(f_max), n_mels + 2) / 2595) - 1)
    bank = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, mid, hi = edges[i : i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return bank


MEL_BANDS = 8
_BANDS = mel_filterbank(MEL_BANDS)
_CONTENT_MELS = mel_filterbank(32)


def features(audio) -> np.ndarray:
    """
    Fixed hand-crafted vector (24 numbers, each scaled to about unit range): per mel band (8) the mean level
    relative to the clip's mean level and its standard deviation over time, both /10 dB; then the log2 centroid,
    log2 pitch jitter, pulsed fraction, log2 pulse rate, fade /10 dB, pitch range, glide /10, level /10 dB.
    """
    power = power_spectrogram(audio)
    band_db = 10 * np.log10(power @ _BANDS.T + 1e-10)
    m = measure(audio)
    return np.concatenate(
        [
            (band_db.mean(0) - band_db.mean()) / 10.0,
            band_db.std(0) / 10.0,
            [
                np.log2(m["centroid_hz"] + 1.0) - 10.0,
                np.log2(m["pitch_jitter"] + 1e-3),
                m["pulsed_fraction"],
                np.log2(m["pulse_rate_hz"] + 0.25),
                m["fade_db"] / 10.0,
                m["pitch_range_oct"],
                m["glide_oct_s"] / 10.0,
                m["level_db"] / 10.0,
            ],
        ]
    )


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (rows):
    ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (n >= 2, dim) feature arrays of the same dim, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    covmean = np.real(covmean)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))
    return max(value, 0.0)


def log_mel(audio) -> np.ndarray:
    """32-band log-mel spectrogram in dB: (frames, 32)."""
    return 10 * np.log10(power_spectrogram(audio) @ _CONTENT_MELS.T + 1e-10)


def content_distance(audio_a, audio_b, range_db: float = 40.0) -> float:
    """Mean absolute difference (dB) of two clips' log-mel spectrograms, frame by frame, both floored `range_db`
    below their joint peak, over the cells where either has content: small when the same events happen at the same times and pitches, large for two
    different takes of the same prompt; a noise floor under the content does not count."""
    a, b = log_mel(audio_a), log_mel(audio_b)
    n = min(len(a), len(b))
    floor = max(a.max(), b.max()) - range_db
    a, b = np.maximum(a[:n], floor), np.maximum(b[:n], floor)
    active = np.maximum(a, b) > floor  # cells where either clip has content
    return float(np.mean(np.abs(a - b)[active])) if active.any() else 0.0
