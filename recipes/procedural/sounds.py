"""Procedural sound effects with captions: what the demo model is trained on and evaluated with.

Every clip is one *class* (a source type and its attributes, e.g. a high-pitched tone fading out) drawn with
random details (exact pitch, rate, phase, level) from a seeded generator, and captioned from paraphrase
templates. Two template sets per source: the training templates, and held-out ones ("the sound of ...",
"we hear ...") that only the test split uses, so evaluation asks for sounds in words the model never saw.

Attributes (and the values a listener can name):

    source     tone, beeps, siren, sweep, chirps, noise, clicks, knocks
    pitch      low (120-250 Hz), mid (450-900 Hz), high (1.8-3.6 kHz)       tone, beeps
    envelope   steady, fade_in, fade_out (a 30-40 dB ramp over the clip)     tone, noise
    rate       slow (~2 a second), fast (~5-6 a second)                      beeps, siren, chirps, clicks, knocks
    direction  up, down (a 3-4 octave glide over the clip)                   sweep
    colour     hiss (bright), rain (mid, crackling), rumble (30-250 Hz)  noise

`parse_prompt` reads those attributes back from free text, so the evaluator can score any prompt that uses
the vocabulary, not only the generated captions.
"""

import itertools
import re

import numpy as np
from scipy import signal

SAMPLING_RATE = 44100
# 4.087 s: a whole number of latent frames for every power-of-two VAE hop up to 2048 (88 x 2048).
CLIP_SAMPLES = 180224

PITCH_BANDS_HZ = {"low": (120.0, 250.0), "mid": (450.0, 900.0), "high": (1800.0, 3600.0)}
RATES_HZ = {"slow": (1.6, 2.4), "fast": (5.0, 6.5)}
SIREN_RATES_HZ = {"slow": (0.4, 0.7), "fast": (2.5, 3.5)}
SIREN_DEPTH_OCT = {"slow": (0.5, 0.7), "fast": (0.3, 0.45)}  # octaves either side of the centre

# Which attributes each source has; a class is one value for each of them.
SOURCES = {
    "tone": ("pitch", "envelope"),
    "beeps": ("pitch", "rate"),
    "siren": ("rate",),
    "sweep": ("direction",),
    "chirps": ("rate",),
    "noise": ("colour", "envelope"),
    "clicks": ("rate",),
    "knocks": ("rate",),
}
VALUES = {
    "pitch": ("low", "mid", "high"),
    "envelope": ("steady", "fade_in", "fade_out"),
    "rate": ("slow", "fast"),
    "direction": ("up", "down"),
    "colour": ("hiss", "rain", "rumble"),
}

# ------------------------------------------------------------------------------------------------ captions
# Phrases per attribute value. Slots: {pitch} {env} {rate_adj} {rate} {dir_adj} {dir} {colour}.
PHRASES = {
    "pitch": {"low": ["low", "low-pitched", "deep"], "mid": ["medium-pitched", "mid-pitched", "mid-range"],
              "high": ["high", "high-pitched", "shrill"]},
    "env": {"steady": ["held steady", "at a constant volume", "that stays steady"],
            "fade_in": ["fading in", "slowly getting louder", "swelling up"],
            "fade_out": ["fading out", "slowly getting quieter", "dying away"]},
    "rate_adj": {"slow": ["slow", "slowly repeating", "leisurely"], "fast": ["fast", "rapid", "quickly repeating"]},
    "rate": {"slow": ["repeating slowly", "at a slow pace", "about twice a second"],
             "fast": ["repeating quickly", "at a fast pace", "in rapid succession"]},
    "dir_adj": {"up": ["rising", "upward", "ascending"], "down": ["falling", "downward", "descending"]},
    "dir": {"up": ["sweeping up", "going up in pitch", "gliding upward"],
            "down": ["sweeping down", "going down in pitch", "gliding downward"]},
    "colour": {"hiss": ["hiss", "hissing noise", "a steam hiss"], "rain": ["rain", "rain noise", "rainfall"],
               "rumble": ["rumble", "rumbling noise", "a deep rumble"]},
}
SLOT_ATTRIBUTE = {"pitch": "pitch", "env": "envelope", "rate_adj": "rate", "rate": "rate", "dir_adj": "direction",
                  "dir": "direction", "colour": "colour"}

TRAIN_TEMPLATES = {
    "tone": ["a {pitch} tone {env}", "{pitch} sine tone, {env}", "a pure {pitch} tone {env}",
             "an electronic {pitch} tone {env}"],
    "beeps": ["{rate_adj} {pitch} beeps", "a {pitch} beep {rate}", "{pitch} beeping {rate}",
              "an alarm of {rate_adj} {pitch} beeps"],
    "siren": ["a {rate_adj} siren", "a siren wailing {rate}", "an emergency siren, {rate_adj}", "{rate_adj} siren sound"],
    "sweep": ["a {dir_adj} sweep", "a tone {dir}", "{dir_adj} frequency sweep", "a sine sweep {dir}"],
    "chirps": ["{rate_adj} chirps", "a bird-like chirp {rate}", "{rate_adj} chirping", "short chirps {rate}"],
    "noise": ["{colour} {env}", "a bed of {colour} {env}", "background {colour} {env}", "{colour}, {env}"],
    "clicks": ["{rate_adj} clicks", "a clicking sound {rate}", "{rate_adj} clicking", "sharp clicks {rate}"],
    "knocks": ["{rate_adj} knocks", "knocking on a door {rate}", "{rate_adj} knocking", "dull knocks {rate}"],
}
HELD_OUT_TEMPLATES = {
    "tone": ["the sound of a {pitch} tone {env}", "we hear a {pitch} test tone {env}"],
    "beeps": ["the sound of {rate_adj} {pitch} beeps", "we hear a {pitch} beep {rate}"],
    "siren": ["the sound of a {rate_adj} siren", "we hear a siren {rate}"],
    "sweep": ["the sound of a {dir_adj} sweep", "we hear a tone {dir}"],
    "chirps": ["the sound of {rate_adj} chirps", "we hear chirping {rate}"],
    "noise": ["the sound of {colour} {env}", "we hear {colour} {env}"],
    "clicks": ["the sound of {rate_adj} clicks", "we hear clicks {rate}"],
    "knocks": ["the sound of {rate_adj} knocks", "we hear knocking {rate}"],
}

# Words that name a source; checked in this order (a "tone sweeping up" is a sweep, "hiss" is noise).
SOURCE_PATTERNS = [
    ("siren", r"\bsirens?\b"),
    ("chirps", r"\bchirp(s|ing)?\b"),
    ("beeps", r"\bbeep(s|ing)?\b"),
    ("clicks", r"\bclick(s|ing)?\b"),
    ("knocks", r"\bknock(s|ing)?\b"),
    ("sweep", r"\bsweep\b|\bsweeping (up|down)\b|\bgliding (up|down)ward\b|\bgoing (up|down) in pitch\b"),
    ("noise", r"\bnoise\b|\bhiss(ing)?\b|\brain(fall)?\b|\brumbl(e|ing)\b"),
    ("tone", r"\btones?\b"),
]


def all_classes() -> list[dict]:
    """Every attribute combination: 34 classes, each a dict {"source": ..., attribute: value, ...}."""
    classes = []
    for source, attributes in SOURCES.items():
        for values in itertools.product(*(VALUES[a] for a in attributes)):
            classes.append({"source": source, **dict(zip(attributes, values))})
    return classes


def class_name(attributes: dict) -> str:
    """"tone/high/fade_out": the source, then its attribute values in `SOURCES` order."""
    return "/".join([attributes["source"]] + [attributes[a] for a in SOURCES[attributes["source"]]])


def caption(attributes: dict, rng: np.random.Generator, held_out: bool = False) -> str:
    """A random paraphrase of `attributes` from the training (or held-out) templates."""
    templates = (HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES)[attributes["source"]]
    template = templates[rng.integers(len(templates))]
    slots = {}
    for slot in re.findall(r"{(\w+)}", template):
        options = PHRASES[slot][attributes[SLOT_ATTRIBUTE[slot]]]
        slots[slot] = options[rng.integers(len(options))]
    return template.format(**slots)


def all_captions(attributes: dict, held_out: bool = False) -> set[str]:
    """Every caption `caption` can write for `attributes` (each template with each choice of phrases)."""
    out = set()
    for template in (HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES)[attributes["source"]]:
        slots = re.findall(r"{(\w+)}", template)
        choices = [PHRASES[slot][attributes[SLOT_ATTRIBUTE[slot]]] for slot in slots]
        out.update(template.format(**dict(zip(slots, picked))) for picked in itertools.product(*choices))
    return out


def _phrase_pattern(phrase: str) -> str:
    return r"\b" + re.escape(phrase.removeprefix("a ")) + r"\b"


def parse_prompt(prompt: str) -> dict:
    """
    The attributes a prompt asks for, e.g. "a falling sweep" -> {"source": "sweep", "direction": "down"}.

    Attributes the prompt does not name are left out (they are not scored). Raises ValueError when no source
    word is found or one attribute gets two values ("a rising falling sweep").
    """
    text = prompt.lower()
    source = next((name for name, pattern in SOURCE_PATTERNS if re.search(pattern, text)), None)
    if source is None:
        raise ValueError(
            f"prompt {prompt!r} names no source the evaluator knows; use one of: tone, beeps, siren, sweep, chirps, "
            "noise (hiss, rain, rumble), clicks, knocks"
        )
    attributes = {"source": source}
    for attribute in SOURCES[source]:
        found = set()
        for slot, by_value in PHRASES.items():
            if SLOT_ATTRIBUTE[slot] != attribute:
                continue
            for value, phrases in by_value.items():
                if any(re.search(_phrase_pattern(p), text) for p in phrases):
                    found.add(value)
        if len(found) > 1:
            raise ValueError(f"prompt {prompt!r} gives {attribute} more than one value: {sorted(found)}")
        if found:
            attributes[attribute] = found.pop()
    return attributes


# ------------------------------------------------------------------------------------------------ synthesis
def _t(n: int = CLIP_SAMPLES) -> np.ndarray:
    return np.arange(n) / SAMPLING_RATE


def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _harmonic_tone(freq_hz: np.ndarray, rng) -> np.ndarray:
    """A tone following the instantaneous frequency `freq_hz`, with weak 2nd and 3rd harmonics."""
    phase = 2 * np.pi * np.cumsum(freq_hz) / SAMPLING_RATE + rng.uniform(0, 2 * np.pi)
    a2, a3 = rng.uniform(0.1, 0.35), rng.uniform(0.0, 0.2)
    return (np.sin(phase) + a2 * np.sin(2 * phase) + a3 * np.sin(3 * phase)) / (1 + a2 + a3)


def _envelope(kind: str, rng, n: int = CLIP_SAMPLES) -> np.ndarray:
    """steady: flat; fade_in / fade_out: a ramp linear in dB over the whole clip, 30-40 dB deep."""
    edge = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * SAMPLING_RATE))
    if kind == "steady":
        return edge
    depth_db = rng.uniform(30.0, 40.0)
    ramp_db = np.linspace(-depth_db, 0.0, n)
    if kind == "fade_out":
        ramp_db = ramp_db[::-1]
    return edge * 10 ** (ramp_db / 20)


def _pulse_times(rate_hz: float, rng, n: int = CLIP_SAMPLES) -> np.ndarray:
    """Onsets at `rate_hz` with a random phase and 4 % timing jitter."""
    period = 1.0 / rate_hz
    times = np.arange(rng.uniform(0, period), n / SAMPLING_RATE, period)
    return times + rng.normal(0, 0.04 * period, len(times))


def _place(events: list[tuple[float, np.ndarray]], n: int = CLIP_SAMPLES) -> np.ndarray:
    out = np.zeros(n)
    for time_s, event in events:
        start = int(round(time_s * SAMPLING_RATE))
        if start < 0 or start >= n:
            continue
        stop = min(n, start + len(event))
        out[start:stop] += event[: stop - start]
    return out


def _coloured_noise(colour: str, rng, n: int = CLIP_SAMPLES) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "hiss":  # bright: white noise above ~2 kHz
        return signal.sosfilt(signal.butter(4, rng.uniform(1500, 2500), "highpass", fs=SAMPLING_RATE, output="sos"), white)
    if colour == "rumble":  # dark: noise between 30 Hz and 150-250 Hz
        band = [30.0, rng.uniform(150, 250)]
        return signal.sosfilt(signal.butter(4, band, "bandpass", fs=SAMPLING_RATE, output="sos"), white)
    # rain: pinkish band-limited noise bed plus dense random droplets
    bed = signal.sosfilt(signal.butter(2, [400, 6000], "bandpass", fs=SAMPLING_RATE, output="sos"), white)
    drops = np.zeros(n)
    count = rng.poisson(40 * n / SAMPLING_RATE)
    drops[rng.integers(0, n, count)] = rng.uniform(0.5, 3.0, count) * rng.choice([-1, 1], count)
    drops = signal.sosfilt(signal.butter(2, [1000, 5000], "bandpass", fs=SAMPLING_RATE, output="sos"), drops)
    return bed / bed.std() + 0.8 * drops / (drops.std() + 1e-9)


def synthesize(attributes: dict, rng: np.random.Generator) -> np.ndarray:
    """One clip of the class `attributes`: float32 mono, CLIP_SAMPLES samples at SAMPLING_RATE, peak 0.3-0.8."""
    source, n, t = attributes["source"], CLIP_SAMPLES, _t()
    if source == "tone":
        f0 = _log_uniform(rng, *PITCH_BANDS_HZ[attributes["pitch"]])
        audio = _harmonic_tone(np.full(n, f0), rng) * _envelope(attributes["envelope"], rng)
    elif source == "beeps":
        f0 = _log_uniform(rng, *PITCH_BANDS_HZ[attributes["pitch"]])
        rate = rng.uniform(*RATES_HZ[attributes["rate"]])
        duty = rng.uniform(0.4, 0.6)
        length = int(duty / rate * SAMPLING_RATE)
        ramp = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.005 * SAMPLING_RATE))
        gate = _place([(s, ramp) for s in _pulse_times(rate, rng)])
        audio = _harmonic_tone(np.full(n, f0), rng) * np.clip(gate, 0, 1)
    elif source == "siren":
        fm = rng.uniform(*SIREN_RATES_HZ[attributes["rate"]])
        centre, depth = rng.uniform(700, 1000), rng.uniform(*SIREN_DEPTH_OCT[attributes["rate"]])
        freq = centre * 2 ** (depth * np.sin(2 * np.pi * fm * t + rng.uniform(0, 2 * np.pi)))
        audio = _harmonic_tone(freq, rng) * _envelope("steady", rng)
    elif source == "sweep":
        low, high = rng.uniform(180, 280), rng.uniform(2500, 4000)
        ends = (low, high) if attributes["direction"] == "up" else (high, low)
        freq = np.exp(np.linspace(np.log(ends[0]), np.log(ends[1]), n))
        audio = _harmonic_tone(freq, rng) * _envelope("steady", rng)
    elif source == "chirps":
        rate = rng.uniform(*RATES_HZ[attributes["rate"]])
        events = []
        for onset in _pulse_times(rate, rng):
            length = int(min(rng.uniform(0.08, 0.12), 0.6 / rate) * SAMPLING_RATE)
            f_start = rng.uniform(1800, 2500)
            freq = f_start * 2 ** np.linspace(0.0, rng.uniform(0.8, 1.2), length)
            events.append((onset, _harmonic_tone(freq, rng) * np.hanning(length) ** 0.5))
        audio = _place(events)
    elif source == "noise":
        audio = _coloured_noise(attributes["colour"], rng) * _envelope(attributes["envelope"], rng)
    elif source == "clicks":
        events = []
        for onset in _pulse_times(rng.uniform(*RATES_HZ[attributes["rate"]]), rng):
            length = int(0.004 * SAMPLING_RATE)
            burst = np.diff(rng.standard_normal(length + 1)) * np.exp(-np.arange(length) / (rng.uniform(0.4, 0.8) * 1e-3 * SAMPLING_RATE))
            events.append((onset, burst * 10 ** (rng.uniform(-3, 0) / 20)))
        audio = _place(events)
    elif source == "knocks":
        events = []
        lowpass = signal.butter(2, rng.uniform(500, 800), "lowpass", fs=SAMPLING_RATE, output="sos")
        for onset in _pulse_times(rng.uniform(*RATES_HZ[attributes["rate"]]), rng):
            length = int(0.12 * SAMPLING_RATE)
            decay = np.exp(-np.arange(length) / (rng.uniform(0.015, 0.025) * SAMPLING_RATE))
            body = signal.sosfilt(lowpass, rng.standard_normal(length)) * decay
            events.append((onset, body * 10 ** (rng.uniform(-3, 0) / 20)))
        audio = _place(events)
    else:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    peak = np.abs(audio).max()
    return (audio / max(peak, 1e-9) * rng.uniform(0.3, 0.8)).astype(np.float32)
