"""Streaming audio-caption data for distillation, through `datasets` in streaming mode.

Three sources, one record format (an audio column and a caption column, names chosen by the caller):

- a Hub dataset id (`owner/name`): any dataset with an `Audio` column (or a column of file paths);
- a local folder in the `audiofolder` layout (audio files + `metadata.csv`/`metadata.jsonl` with `file_name`);
  `datasets` needs torchcodec (and FFmpeg) to list such a folder, even though we never let it decode;
- a CSV or JSONL manifest whose audio column holds file paths (relative to the manifest's folder): needs neither
  torchcodec nor FFmpeg.

Audio is never decoded by `datasets` (`Audio(decode=False)` gives the file's bytes or path): soundfile reads it,
its channels are matched to the VAE's (`channels`): for a mono VAE they are averaged to mono; for a stereo VAE
(Stable Audio Open's, 44.1 kHz) a stereo source is kept as it is, a mono source is duplicated to both channels (counted
in the stream state as `upmixed`) and a source with more channels gives its first two. soxr resamples it to the VAE's
rate, and a random window of the model's length is cut, the same for every channel (or the clip is zero-padded at the
end). Batches are `(batch, channels, samples)`. A record that cannot be read is skipped, logged and counted.

Resuming is exact. `datasets` can save a stream's position (`IterableDataset.state_dict`), but not the content of
its shuffle buffer; so records are shuffled here in blocks of `shuffle_buffer_size`: a block is read, permuted with a
seed fixed by (seed, rank, epoch, block), and consumed in order. A `state_dict()` holds the `datasets` position at the
start of the current block and the position inside it; loading it re-reads that one block and goes on from the same
record. Per-record randomness (crop offset, caption choice) is seeded by the record's place in the stream, so a
resumed run sees the same waveforms as a run that was never stopped.
"""

import copy
import io
import logging
import os
import queue
import threading
from dataclasses import dataclass
from itertools import islice

import numpy as np
import soundfile as sf
import soxr
import torch

logger = logging.getLogger(__name__)

MANIFEST_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json"}


class EmptyStreamError(ValueError):
    """The dataset stream has no (decodable) records."""


def open_audio_caption_dataset(
    source: str,
    audio_column: str = "audio",
    caption_column: str = "caption",
    split: str = "train",
    config_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    rank: int = 0,
    world_size: int = 1,
):
    """
    Opens `source` as a streaming `datasets.IterableDataset` of raw records, this process's part of it.

    Args:
        source (`str`): a `.csv`/`.json`/`.jsonl` manifest, an audiofolder directory, or a Hub dataset id.
        audio_column, caption_column (`str`): the record's columns.
        split, config_name, revision, cache_dir: passed to `datasets.load_dataset` (split is ignored for a manifest).
        rank, world_size (`int`): this process's part of the stream (`datasets.distributed.split_dataset_by_node`).

    Returns:
        `(dataset, base_dir)`: the stream, and the folder that relative audio paths are resolved against.
    Raises:
        `ValueError` naming `--dataset_name`, `--audio_column` or `--caption_column` when the source cannot be opened
        or lacks a named column.
    """
    from datasets import Audio, load_dataset
    from datasets.distributed import split_dataset_by_node

    where = f"--dataset_name {source!r}"
    suffix = os.path.splitext(source)[1].lower()
    base_dir = None
    try:
        if os.path.isfile(source):
            if suffix not in MANIFEST_BUILDERS:
                raise ValueError(f"{where}: a manifest file must be one of {sorted(MANIFEST_BUILDERS)}, got {suffix!r}")
            dataset = load_dataset(MANIFEST_BUILDERS[suffix], data_files=source, split="train", streaming=True)
            base_dir = os.path.dirname(os.path.abspath(source))
        elif os.path.isdir(source):
            _require_torchcodec(where)
            dataset = load_dataset("audiofolder", data_dir=source, split=split, streaming=True)
            base_dir = os.path.abspath(source)
        elif os.path.exists(source) or source.count("/") != 1:
            raise ValueError(f"{where} is neither a manifest (.csv/.jsonl), an audio folder nor a Hub id ('owner/name')")
        else:
            dataset = load_dataset(
                source, config_name, split=split, streaming=True, revision=revision, cache_dir=cache_dir
            )
    except ValueError:
        raise
    except Exception as error:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        raise ValueError(f"{where} could not be opened as a streaming dataset: {error}") from error

    columns = dataset.column_names
    if columns is not None:
        for option, column in (("--audio_column", audio_column), ("--caption_column", caption_column)):
            if column not in columns:
                raise ValueError(f"{option} {column!r} is not a column of {where}; its columns are {columns}")
    features = dataset.features
    if features is not None and isinstance(features.get(audio_column), Audio):
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    if world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    return dataset, base_dir


def open_dataset_of_args(args, rank: int = 0, world_size: int = 1):
    """`open_audio_caption_dataset` with the trainer's options (`--dataset_name`, `--audio_column`, ...)."""
    return open_audio_caption_dataset(
        args.dataset_name,
        args.audio_column,
        args.caption_column,
        split=args.dataset_split,
        config_name=args.dataset_config_name,
        revision=args.dataset_revision,
        cache_dir=args.cache_dir,
        rank=rank,
        world_size=world_size,
    )


def _require_torchcodec(where: str) -> None:
    try:
        import torchcodec  # noqa: F401
    except Exception as error:
        raise ValueError(
            f"{where} is an audio folder; `datasets` lists audio folders through torchcodec, which is not usable here "
            f"({error}). Install FFmpeg and `torchcodec==0.13.0` (for torch 2.13), or pass the folder's "
            "metadata.jsonl/metadata.csv itself as a manifest with --audio_column file_name, which needs neither."
        ) from error


def read_audio(value, base_dir: str | None = None) -> tuple[np.ndarray, int]:
    """Reads an audio column value ({bytes, path}, {array, sampling_rate}, or a path) -> ((frames, channels), rate)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            source = io.BytesIO(value["bytes"])
        elif value.get("path"):
            source = value["path"]
        elif value.get("array") is not None:
            array = np.asarray(value["array"], dtype=np.float32)
            return (array[:, None] if array.ndim == 1 else array.T), int(value["sampling_rate"])
        else:
            raise ValueError("the audio value has neither bytes, path nor array")
    elif isinstance(value, str):
        source = value
    else:
        raise TypeError(f"unsupported audio value of type {type(value).__name__}")
    if isinstance(source, str) and "://" in source.split("::")[0]:
        # A streamed Hub or remote file (hf://..., zip://...::https://...): `datasets` opens such URLs.
        from datasets.utils.file_utils import xopen

        with xopen(source, "rb") as f:
            source = io.BytesIO(f.read())
    elif isinstance(source, str) and not os.path.isabs(source) and base_dir is not None and not os.path.exists(source):
        source = os.path.join(base_dir, source)
    audio, rate = sf.read(source, dtype="float32", always_2d=True)
    return audio, int(rate)


CHANNELS = (1, 2)  # mono (the mel and mono-waveform VAEs) or stereo (Stable Audio Open's VAE)


def _check_channels(channels) -> int:
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or int(channels) not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS} (1: mono, 2: stereo), got {channels!r}")
    return int(channels)


def prepare_waveform(
    audio: np.ndarray,
    rate: int,
    target_rate: int,
    num_samples: int,
    rng: np.random.Generator,
    random_crop: bool = True,
    peak_normalize: float | None = None,
    channels: int = 1,
) -> np.ndarray:
    """
    (frames, channels) at `rate` -> float32 at `target_rate`: a window cut (random when `random_crop`, else the
    start) and resampled with soxr, zero-padded at the end if the clip is short.

    - `channels=1`: the source's channels are averaged to mono; returns `(num_samples,)`.
    - `channels=2`: returns `(2, num_samples)`. A stereo source is kept as it is, a mono source is duplicated to both
      channels (it is prepared as mono, then copied: both rows equal `channels=1`'s result), and a source with more
      than 2 channels gives its first two (no downmix: their layout is unknown). Both channels share the window (one
      random offset).

    With `peak_normalize`, each channel's mean is removed and the window is scaled to that peak, over both channels
    together (TANGO's and AudioLDM's `normalize_wav`, 0.5 for their mel VAE; a silent window stays silent).

    Raises:
        `ValueError` for an empty or malformed source, NaN or infinite samples, or `channels` not in (1, 2).
    """
    channels = _check_channels(channels)
    if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"empty or malformed audio of shape {audio.shape}")
    if channels == 2 and audio.shape[1] == 1:
        mono = prepare_waveform(audio, rate, target_rate, num_samples, rng, random_crop, peak_normalize)
        return np.stack([mono, mono])
    if channels == 1:
        signal = audio.mean(axis=1, dtype=np.float32)  # (frames,)
    else:
        signal = np.ascontiguousarray(audio[:, :2], dtype=np.float32)  # (frames, 2): soxr resamples frame-major
    # Cut the window before resampling (a long file is not resampled whole); a few extra source samples give soxr
    # context at the window's end.
    needed = int(np.ceil(num_samples * rate / target_rate)) + (16 if rate != target_rate else 0)
    if signal.shape[0] > needed:
        offset = int(rng.integers(0, signal.shape[0] - needed + 1)) if random_crop else 0
        signal = signal[offset : offset + needed]
    if rate != target_rate:
        signal = soxr.resample(signal, rate, target_rate, quality="HQ").astype(np.float32)
    signal = signal[:num_samples]
    if signal.shape[0] < num_samples:
        signal = np.pad(signal, ((0, num_samples - signal.shape[0]),) + ((0, 0),) * (signal.ndim - 1))
    if not np.isfinite(signal).all():
        raise ValueError("the audio contains NaN or infinite samples")
    if peak_normalize is not None:
        signal = signal - (signal.mean() if signal.ndim == 1 else signal.mean(axis=0, keepdims=True))
        signal = (peak_normalize * signal / (np.abs(signal).max() + 1e-8)).astype(np.float32)
    return signal if channels == 1 else np.ascontiguousarray(signal.T, dtype=np.float32)


def a_weighted_gain_db(sound: np.ndarray, rate: int, min_db: float = -80.0) -> float:
    """The loudest frame's A-weighted power in dB (Hann frames of ≈ 0.128 s, half overlapping): the gain that TANGO's
    mixing augmentation (after Tokozume et al.'s between-class learning) matches two clips by. `sound` is `(samples,)`
    or `(channels, samples)`; a multichannel clip is measured on its channel mean (the loudness of its mono downmix: an
    approximation of a stereo clip's perceived loudness that is good enough to balance two clips against each
    other)."""
    if sound.ndim == 2:
        sound = sound.mean(axis=0)
    n_fft = 2 ** int(round(np.log2(rate * 0.128)))  # 2048 at 16 kHz, as TANGO
    if len(sound) < n_fft:
        sound = np.pad(sound, (0, n_fft - len(sound)))
    freq = np.linspace(0, rate // 2, n_fft // 2 + 1)
    freq_sq = np.maximum(freq**2, 1.0)
    weight_db = 2.0 + 20.0 * (
        2 * np.log10(12194) + 2 * np.log10(freq_sq) - np.log10(freq_sq + 12194**2) - np.log10(freq_sq + 20.6**2)
        - 0.5 * np.log10(freq_sq + 107.7**2) - 0.5 * np.log10(freq_sq + 737.9**2)
    )  # fmt: skip
    weight = np.power(10.0, np.maximum(weight_db, min_db) / 10)
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(sound.astype(np.float64), n_fft)[:: n_fft // 2]
    power = (np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 * weight).sum(axis=-1)
    return float(10 * np.log10(np.maximum(power, 10 ** (min_db / 10))).max())


def mix_clips(sound1: np.ndarray, sound2: np.ndarray, rate: int, ratio: float = 0.5) -> np.ndarray:
    """Two clips mixed so that `ratio` is the first one's share of the perceived loudness (TANGO's `mix`). Both are
    `(samples,)` or both `(channels, samples)` (the loudness of a multichannel clip: `a_weighted_gain_db`); every
    channel gets the same two gains."""
    gain1, gain2 = a_weighted_gain_db(sound1, rate), a_weighted_gain_db(sound2, rate)
    t = 1.0 / (1 + np.power(10, (gain1 - gain2) / 20.0) * (1 - ratio) / ratio)
    return ((sound1 * t + sound2 * (1 - t)) / np.sqrt(t**2 + (1 - t) ** 2)).astype(np.float32)


def mix_augment(audio: torch.Tensor, captions: list[str], num: int, rate: int, generator: torch.Generator, peak: float | None = None):
    """
    TANGO's data augmentation: `num` more clips for the batch, each two different clips of it mixed at equal
    loudness (`mix_clips`) and captioned "<first> and <second, uncapitalised>". The pairs are drawn with `generator`
    (so a resumed run draws the same ones). The mixes are scaled together to `peak` (TANGO: 0.5), or to the batch's
    own peak. `audio` is `(B, C, samples)`, C = 1 (mono) or 2 (stereo: each clip's loudness is that of its channel
    mean, see `a_weighted_gain_db`, and both channels are mixed with the same gains and scaled by the same factor).
    Returns `(audio (B + num', C, samples), captions)`, num' = min(num, pairs available).
    """
    if audio.ndim != 3:
        raise ValueError(f"mix_augment takes audio of shape (batch, channels, samples), got {tuple(audio.shape)}")
    batch = audio.shape[0]
    pairs = [(i, j) for i in range(batch) for j in range(i + 1, batch)]
    if num <= 0 or not pairs:
        return audio, captions
    order = torch.randperm(len(pairs), generator=generator)[:num].tolist()
    mono = audio.shape[1] == 1
    clips = audio[:, 0].float().cpu().numpy() if mono else audio.float().cpu().numpy()  # (B, N) or (B, C, N)
    mixed = np.stack([mix_clips(clips[pairs[k][0]], clips[pairs[k][1]], rate) for k in order])
    target = peak if peak is not None else float(np.abs(clips).max())
    mixed = mixed * (target / (np.abs(mixed).max() + 1e-8))
    texts = [f"{captions[pairs[k][0]]} and {captions[pairs[k][1]][:1].lower()}{captions[pairs[k][1]][1:]}" for k in order]
    mixed = torch.from_numpy(mixed)[:, None] if mono else torch.from_numpy(np.ascontiguousarray(mixed))
    return torch.cat([audio, mixed.to(audio)]), list(captions) + texts


def pick_caption(value, rng: np.random.Generator) -> str:
    """A caption column value -> one caption (a list of captions, as in AudioCaps-style datasets, gives a random one)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty list of captions")
        value = value[int(rng.integers(0, len(value)))]
    if not isinstance(value, str):
        raise TypeError(f"a caption must be a string, got {type(value).__name__}")
    return value.strip()


@dataclass
class AudioExample:
    waveform: np.ndarray  # float32 at the VAE's rate: (num_samples,) mono, or (2, num_samples) stereo
    caption: str


class AudioCaptionStream:
    """
    An endless, exactly resumable iterator of `AudioExample`s over a `datasets.IterableDataset` (epoch after epoch).

    Args:
        dataset: the raw-record stream of this process (from `open_audio_caption_dataset`), not yet iterated; the
            stream positions it with `load_state_dict` (its fresh state starts every epoch).
        audio_column, caption_column (`str`): the record's columns.
        sampling_rate (`int`): the VAE's rate; num_samples (`int`): the model's length in samples.
        seed (`int`), rank (`int`): seed the block permutations and per-record randomness.
        shuffle_buffer_size (`int`): block size of the shuffle (1 keeps the stream's order).
        base_dir (`str`, *optional*): folder for relative audio paths.
        random_crop (`bool`): random window of long clips (else their start).
        peak_normalize (`float`, *optional*): scale every window to this peak after removing its mean (see
            `prepare_waveform`).
        channels (`int`): the VAE's audio channels, 1 (mono: sources averaged) or 2 (stereo: stereo sources kept,
            mono sources duplicated to both channels and counted in `upmixed`, sources with more channels give their
            first two); see `prepare_waveform`.
    """

    def __init__(
        self,
        dataset,
        audio_column: str,
        caption_column: str,
        sampling_rate: int,
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        shuffle_buffer_size: int = 1000,
        base_dir: str | None = None,
        random_crop: bool = True,
        peak_normalize: float | None = None,
        channels: int = 1,
    ):
        if shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}")
        self.channels = _check_channels(channels)
        self.dataset = dataset
        self.audio_column, self.caption_column = audio_column, caption_column
        self.sampling_rate, self.num_samples = int(sampling_rate), int(num_samples)
        self.seed, self.rank = int(seed), int(rank)
        self.shuffle_buffer_size = int(shuffle_buffer_size)
        self.base_dir, self.random_crop, self.peak_normalize = base_dir, random_crop, peak_normalize
        self.epoch = 0
        self.skipped = 0  # records that failed to decode, over the whole run
        self.upmixed = 0  # examples of a mono source duplicated to both channels (stereo only), over the whole run
        self._upmix_logged = False
        self._block_index = 0
        self._block_start = None  # `datasets` state at the start of the current block; None = start of the epoch
        self._position = 0
        self._decoded_in_epoch = 0
        self._block = None
        self._iterator = None
        self._next_block_start = None
        self._warned = set()
        self._initial_state = copy.deepcopy(dataset.state_dict())

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "shuffle_buffer_size": self.shuffle_buffer_size,
            "epoch": self.epoch,
            "skipped": self.skipped,
            "upmixed": self.upmixed,
            "block_index": self._block_index,
            "block_start": copy.deepcopy(self._block_start),
            "position": self._position,
            "decoded_in_epoch": self._decoded_in_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("seed", "shuffle_buffer_size"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"the checkpoint's data stream used {name}={state[name]}, this run {getattr(self, name)}: "
                    f"resume with the same --{name} to see the same batches"
                )
        self.epoch, self.skipped = int(state["epoch"]), int(state["skipped"])
        self.upmixed = int(state.get("upmixed", 0))  # absent from the state of a stream older than stereo support
        self._block_index, self._position = int(state["block_index"]), int(state["position"])
        self._block_start = copy.deepcopy(state["block_start"])
        self._decoded_in_epoch = int(state["decoded_in_epoch"])
        self._block = self._iterator = self._next_block_start = None

    # ------------------------------------------------------------------------------------------ iteration
    def __iter__(self):
        return self

    def _open(self):
        # One dataset object, re-positioned by its own state dict (its fresh state starts a new pass).
        self.dataset.load_state_dict(copy.deepcopy(self._block_start or self._initial_state))
        self._iterator = iter(self.dataset)

    def _read_block(self) -> None:
        if self._iterator is None:
            self._open()
        records = list(islice(self._iterator, self.shuffle_buffer_size))
        if not records:
            if self._block_index == 0:
                raise EmptyStreamError(f"the dataset stream is empty (process {self.rank})")
            if self._decoded_in_epoch == 0:
                raise EmptyStreamError(f"no record of the dataset stream could be decoded (process {self.rank})")
            self.epoch += 1
            self._block_index, self._block_start, self._position, self._decoded_in_epoch = 0, None, 0, 0
            self._iterator = None
            return self._read_block()
        self._next_block_start = copy.deepcopy(self.dataset.state_dict())
        if self.shuffle_buffer_size > 1:
            order = np.random.default_rng([self.seed, self.rank, self.epoch, self._block_index]).permutation(len(records))
            records = [records[i] for i in order]
        self._block = records

    def __next__(self) -> AudioExample:
        while True:
            if self._block is None:
                self._read_block()
            if self._position >= len(self._block):
                self._block_start, self._block = self._next_block_start, None
                self._block_index, self._position = self._block_index + 1, 0
                continue
            record, index = self._block[self._position], self._position
            self._position += 1
            rng = np.random.default_rng([self.seed, self.rank, self.epoch, self._block_index, index])
            try:
                example, upmixed = self._decode(record, rng)
            except Exception as error:  # any unreadable record is skipped, whatever the decoder raised
                self.skipped += 1
                name = _describe(record, self.audio_column)
                # Warn once per record; later passes over it only add to the count (logged as data/skipped_records).
                level = logging.DEBUG if name in self._warned else logging.WARNING
                if len(self._warned) < 10000:
                    self._warned.add(name)
                logger.log(level, "skipping a record that could not be decoded (%s): %s", name, error)
                continue
            self._decoded_in_epoch += 1
            if upmixed:
                self.upmixed += 1
                if not self._upmix_logged:
                    self._upmix_logged = True
                    logger.info(
                        "mono source duplicated to both channels for the stereo teacher (%s); counted in the data "
                        "stream state as 'upmixed', this one message only",
                        _describe(record, self.audio_column),
                    )
            return example

    def _decode(self, record: dict, rng: np.random.Generator) -> tuple[AudioExample, bool]:
        """-> (example, whether a mono source was duplicated to stereo)."""
        audio, rate = read_audio(record[self.audio_column], self.base_dir)
        waveform = prepare_waveform(
            audio, rate, self.sampling_rate, self.num_samples, rng, self.random_crop, self.peak_normalize, self.channels
        )
        upmixed = self.channels == 2 and audio.ndim == 2 and audio.shape[1] == 1
        return AudioExample(waveform, pick_caption(record[self.caption_column], rng)), upmixed

    def check(self) -> None:
        """Before training: the stream has a record, with both columns, and some record decodes. Reads records from
        the start of a fresh pass until one decodes. Raises `ValueError` (`EmptyStreamError`) otherwise."""
        if self._iterator is not None:
            raise RuntimeError("check() reads the stream from its start: call it before iterating")
        errors = 0
        self.dataset.load_state_dict(copy.deepcopy(self._initial_state))
        for record in self.dataset:
            for option, column in (("--audio_column", self.audio_column), ("--caption_column", self.caption_column)):
                if column not in record:
                    raise ValueError(f"{option} {column!r} is not a column of the dataset; its records have {sorted(record)}")
            try:
                self._decode(record, np.random.default_rng(0))
                return
            except Exception as error:
                errors += 1
                logger.warning("record %s could not be decoded: %s", _describe(record, self.audio_column), error)
        if errors:
            raise EmptyStreamError(f"none of the {errors} records of the dataset stream could be decoded (process {self.rank})")
        raise EmptyStreamError(f"the dataset stream is empty (process {self.rank})")

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        """`(audio (batch_size, channels, num_samples) float32, captions)`."""
        examples = [next(self) for _ in range(batch_size)]
        audio = torch.from_numpy(np.stack([e.waveform for e in examples]))
        if audio.ndim == 2:  # mono examples are (num_samples,)
            audio = audio[:, None, :]
        return audio, [e.caption for e in examples]


class BatchPrefetcher:
    """
    Batches of an `AudioCaptionStream`, read `depth` batches ahead in a background thread (decoding and resampling
    overlap the training step; 0 reads in the caller's thread). Each batch travels with the stream state that follows
    it, and `state_dict()` is the state after the last batch handed out, so a checkpoint resumes exactly whatever the
    thread has read ahead. Load a saved state into the stream before making the prefetcher.
    """

    def __init__(self, stream: AudioCaptionStream, batch_size: int, depth: int = 2):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.stream, self.batch_size, self.depth = stream, batch_size, depth
        self._state = stream.state_dict()
        self._queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None

    def _produce(self):
        try:
            while not self._stop.is_set():
                item = (self.stream.next_batch(self.batch_size), self.stream.state_dict())
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # handed to the training thread, which raises it
            self._queue.put(error)

    def next_batch(self) -> tuple[torch.Tensor, list[str]]:
        if self.depth == 0:
            batch = self.stream.next_batch(self.batch_size)
            self._state = self.stream.state_dict()
            return batch
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="audio-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def state_dict(self) -> dict:
        """The stream state after the last batch handed out."""
        return copy.deepcopy(self._state)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _describe(record: dict, audio_column: str) -> str:
    value = record.get(audio_column)
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    return str(value)[:200]
