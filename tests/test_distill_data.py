"""Streaming training data (distill/data.py): decoding to mono at the VAE's rate with a real resampler, random
crops, corrupt records skipped and counted, manifests and audio folders giving the same examples, the stream split by
rank, exact resumption, and clear errors for missing columns and empty streams."""

import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.data import (  # noqa: E402
    AudioCaptionStream,
    EmptyStreamError,
    open_audio_caption_dataset,
    pick_caption,
    prepare_waveform,
)

RATE, LENGTH = 44100, 128  # the tiny VAE's rate; 16 frames x hop 8


def write_dataset(folder, n=8, corrupt_at=None):
    """WAVs at 16/22.05/48 kHz, stereo among them, of several lengths, plus a corrupt file; a metadata.jsonl
    (audiofolder layout, also usable as a manifest) and a CSV manifest in the parent folder."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(n):
        rate = (16000, 22050, 48000)[i % 3]
        t = np.arange(int(rate * (0.002 + 0.003 * i))) / rate
        x = 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t)
        if i % 2:
            x = np.stack([x, -0.5 * x], axis=1)
        sf.write(os.path.join(folder, f"clip{i}.wav"), x.astype(np.float32), rate)
        rows.append({"file_name": f"clip{i}.wav", "caption": f"caption {i}"})
    with open(os.path.join(folder, "corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x24\x00\x00\x00WAVEfmt not really a wav file")
    rows.insert(n if corrupt_at is None else corrupt_at, {"file_name": "corrupt.wav", "caption": "broken"})
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    csv_path = os.path.join(os.path.dirname(folder), "manifest.csv")
    with open(csv_path, "w") as f:
        f.write("path,text\n" + "".join(f"{os.path.basename(folder)}/{r['file_name']},{r['caption']}\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill_data") / "wavs"
    write_dataset(str(folder))
    return str(folder)


def stream_of(source, audio_column="file_name", caption_column="caption", rank=0, world_size=1, **kwargs):
    dataset, base_dir = open_audio_caption_dataset(source, audio_column, caption_column, rank=rank, world_size=world_size)
    options = dict(seed=0, rank=rank, shuffle_buffer_size=1, base_dir=base_dir)
    options.update(kwargs)
    return AudioCaptionStream(dataset, audio_column, caption_column, RATE, LENGTH, **options)


def take(stream, n):
    return [next(stream) for _ in range(n)]


# ------------------------------------------------------------------------------------------ decoding
def test_waveform_is_mono_resampled_with_a_real_resampler_and_cut_to_length():
    rate, n = 16000, 4000
    t = np.arange(n) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32)
    out = prepare_waveform(stereo, rate, RATE, 8000, np.random.default_rng(0), random_crop=False)
    assert out.shape == (8000,) and out.dtype == np.float32
    # Against scipy's polyphase resampler of the channel mean (an independent resampler), away from the edges.
    expected = resample_poly(stereo.mean(axis=1).astype(np.float64), 441, 160)[:8000]
    np.testing.assert_allclose(out[200:7800], expected[200:7800], atol=2e-3)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * RATE / 8000 - 440) < 6


def test_peak_normalize_removes_the_mean_and_scales_to_the_peak_as_tango():
    rng = np.random.default_rng(0)
    clip = (0.1 + 0.05 * rng.standard_normal((400, 2))).astype(np.float32)
    out = prepare_waveform(clip, RATE, RATE, 400, rng, random_crop=False, peak_normalize=0.5)
    mono = clip.mean(axis=1) - clip.mean()
    np.testing.assert_allclose(out, 0.5 * mono / (np.abs(mono).max() + 1e-8), rtol=1e-5, atol=1e-6)
    assert abs(np.abs(out).max() - 0.5) < 1e-6 and abs(out.mean()) < 1e-6
    silent = prepare_waveform(np.zeros((400, 1), np.float32), RATE, RATE, 400, rng, peak_normalize=0.5)
    assert np.all(silent == 0)


def test_mix_augment_adds_equal_loudness_mixes_of_two_clips_of_the_batch_with_joined_captions():
    import torch

    from distill.data import mix_augment, mix_clips

    t = np.arange(4096) / 16000
    low, high = 0.5 * np.sin(2 * np.pi * 500 * t), 0.05 * np.sin(2 * np.pi * 2000 * t)
    mixed = mix_clips(low, high, 16000)
    spectrum = np.abs(np.fft.rfft(mixed))
    level = lambda f: spectrum[int(round(f * len(t) / 16000))]  # noqa: E731
    assert 0.5 < level(500) / level(2000) < 2  # the quiet clip is brought up to the loud one's loudness (±3 dB)
    audio = torch.from_numpy(np.stack([low, high, 0.2 * low])[:, None].astype(np.float32))
    captions = ["A dog barks", "Rain falls", "Wind"]
    out, texts = mix_augment(audio, captions, 2, 16000, torch.Generator().manual_seed(0), peak=0.5)
    assert out.shape == (5, 1, 4096) and torch.equal(out[:3], audio)
    assert abs(float(out[3:].abs().max()) - 0.5) < 1e-6
    assert all(" and " in c and c.split(" and ")[1][0].islower() for c in texts[3:]) and texts[:3] == captions
    again, texts_again = mix_augment(audio, captions, 2, 16000, torch.Generator().manual_seed(0), peak=0.5)
    assert torch.equal(again, out) and texts_again == texts
    assert mix_augment(audio[:1], captions[:1], 2, 16000, torch.Generator())[0].shape[0] == 1  # no pair to mix


def test_short_clips_are_zero_padded_and_long_clips_cropped_at_random():
    short = np.ones((50, 1), np.float32)
    padded = prepare_waveform(short, RATE, RATE, 128, np.random.default_rng(0))
    assert np.all(padded[:50] == 1) and np.all(padded[50:] == 0)
    ramp = np.arange(1000, dtype=np.float32)[:, None]
    starts = {prepare_waveform(ramp, RATE, RATE, 128, np.random.default_rng(i))[0] for i in range(20)}
    assert len(starts) > 10  # random windows
    assert prepare_waveform(ramp, RATE, RATE, 128, np.random.default_rng(0), random_crop=False)[0] == 0
    np.testing.assert_array_equal(np.diff(prepare_waveform(ramp, RATE, RATE, 128, np.random.default_rng(3))), 1)
    with pytest.raises(ValueError, match="empty"):
        prepare_waveform(np.zeros((0, 1), np.float32), RATE, RATE, 128, np.random.default_rng(0))


def test_a_caption_list_gives_one_of_its_captions():
    assert pick_caption("  a dog barks ", np.random.default_rng(0)) == "a dog barks"
    picks = {pick_caption(["a", "b", "c"], np.random.default_rng(i)) for i in range(30)}
    assert picks == {"a", "b", "c"}
    with pytest.raises(TypeError):
        pick_caption(3, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ streams
def test_manifest_stream_skips_and_counts_the_corrupt_file_and_loses_nothing_else(data_dir, caplog):
    stream = stream_of(os.path.join(data_dir, "metadata.jsonl"))
    with caplog.at_level("WARNING"):
        examples = take(stream, 9)  # 8 good records, the corrupt one, then the first of the next epoch
    assert [e.caption for e in examples] == [f"caption {i}" for i in range(8)] + ["caption 0"]
    assert stream.skipped == 1 and stream.epoch == 1
    assert "corrupt.wav" in caplog.text
    for i, example in enumerate(examples[:8]):
        assert example.waveform.shape == (LENGTH,)
        audio, rate = sf.read(os.path.join(data_dir, f"clip{i}.wav"), dtype="float32", always_2d=True)
        if len(audio) * RATE / rate < LENGTH:  # shorter than the window: no crop, the whole clip, mono, resampled
            expected = prepare_waveform(audio, rate, RATE, LENGTH, np.random.default_rng(0), random_crop=False)
            np.testing.assert_array_equal(example.waveform, expected)


def test_csv_manifest_with_other_column_names_gives_the_same_examples(data_dir):
    jsonl = take(stream_of(os.path.join(data_dir, "metadata.jsonl")), 8)
    csv = take(stream_of(os.path.join(os.path.dirname(data_dir), "manifest.csv"), "path", "text"), 8)
    for a, b in zip(jsonl, csv):
        assert a.caption == b.caption
        np.testing.assert_array_equal(a.waveform, b.waveform)


def test_audio_folder_gives_the_same_examples_as_its_manifest(data_dir):
    pytest.importorskip("torchcodec", reason="datasets lists audio folders through torchcodec (CI installs it)")
    manifest = take(stream_of(os.path.join(data_dir, "metadata.jsonl")), 8)
    folder = take(stream_of(data_dir, audio_column="audio"), 8)
    for a, b in zip(manifest, folder):
        assert a.caption == b.caption
        np.testing.assert_array_equal(a.waveform, b.waveform)


def test_resuming_from_a_state_dict_continues_with_the_same_examples(data_dir):
    source = os.path.join(data_dir, "metadata.jsonl")
    stream = stream_of(source, shuffle_buffer_size=3)
    take(stream, 7)
    state = stream.state_dict()
    continued = take(stream, 15)  # across block and epoch boundaries
    resumed = stream_of(source, shuffle_buffer_size=3)
    resumed.load_state_dict(state)
    again = take(resumed, 15)
    assert [e.caption for e in again] == [e.caption for e in continued]
    for a, b in zip(again, continued):
        np.testing.assert_array_equal(a.waveform, b.waveform)  # the same random crops too
    assert resumed.skipped == stream.skipped and resumed.epoch == stream.epoch
    with pytest.raises(ValueError, match="--shuffle_buffer_size"):
        stream_of(source, shuffle_buffer_size=4).load_state_dict(state)


def test_blocks_are_shuffled_differently_every_epoch(data_dir):
    stream = stream_of(os.path.join(data_dir, "metadata.jsonl"), shuffle_buffer_size=9)
    epoch0, epoch1 = [e.caption for e in take(stream, 8)], [e.caption for e in take(stream, 8)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(f"caption {i}" for i in range(8))
    assert epoch0 != epoch1 and epoch0 != sorted(epoch0)


def test_processes_read_disjoint_parts_that_cover_the_stream(data_dir):
    source = os.path.join(data_dir, "metadata.jsonl")
    parts = [take(stream_of(source, rank=r, world_size=2), 4) for r in range(2)]
    captions = [[e.caption for e in part] for part in parts]
    assert not set(captions[0]) & set(captions[1])
    assert set(captions[0]) | set(captions[1]) == {f"caption {i}" for i in range(8)}


# ------------------------------------------------------------------------------------------ bad input
def test_a_missing_column_is_named(data_dir):
    with pytest.raises(ValueError, match="--caption_column 'text'"):
        open_audio_caption_dataset(os.path.join(data_dir, "metadata.jsonl"), "file_name", "text")
    with pytest.raises(ValueError, match="--audio_column 'audio'"):
        open_audio_caption_dataset(os.path.join(data_dir, "metadata.jsonl"), "audio", "caption")


def test_empty_and_undecodable_streams_fail_before_training(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("file_name,caption\n")
    with pytest.raises(EmptyStreamError, match="empty"):
        stream_of(str(empty)).check()
    broken = tmp_path / "broken.jsonl"
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    broken.write_text(json.dumps({"file_name": "bad.wav", "caption": "x"}) + "\n")
    with pytest.raises(EmptyStreamError, match="none of the 1 records .* could be decoded"):
        stream_of(str(broken)).check()


def test_a_source_that_is_nothing_is_named(tmp_path):
    with pytest.raises(ValueError, match="--dataset_name"):
        open_audio_caption_dataset(str(tmp_path / "missing" / "data.jsonl"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="manifest file must be one of"):
        open_audio_caption_dataset(str(tmp_path / "notes.txt"))


def test_audio_inside_an_archive_is_read_through_datasets_url_opener(tmp_path):
    """Streamed Hub datasets hand out chained URLs (zip://member::archive, hf://...) rather than local paths."""
    import zipfile

    from distill.data import read_audio

    x = (0.1 * np.sin(np.arange(400) / 7)).astype(np.float32)
    sf.write(tmp_path / "a.wav", np.stack([x, x], axis=1), 22050)
    with zipfile.ZipFile(tmp_path / "audio.zip", "w") as archive:
        archive.write(tmp_path / "a.wav", "inner/a.wav")
    audio, rate = read_audio({"path": f"zip://inner/a.wav::{tmp_path / 'audio.zip'}", "bytes": None})
    assert rate == 22050 and audio.shape == (400, 2)
    np.testing.assert_allclose(audio[:, 0], x, atol=1e-4)


def test_prefetched_batches_and_their_state_are_those_of_the_stream(data_dir):
    """Reading ahead in a thread changes nothing: the same batches, and a state that resumes after the last batch
    handed out, not after what the thread has read."""
    from distill.data import BatchPrefetcher

    source = os.path.join(data_dir, "metadata.jsonl")
    direct = stream_of(source, shuffle_buffer_size=3)
    expected = [direct.next_batch(2) for _ in range(7)]
    prefetcher = BatchPrefetcher(stream_of(source, shuffle_buffer_size=3), 2, depth=3)
    got = [prefetcher.next_batch() for _ in range(4)]
    state = prefetcher.state_dict()
    prefetcher.close()
    resumed = stream_of(source, shuffle_buffer_size=3)
    resumed.load_state_dict(state)
    got += [resumed.next_batch(2) for _ in range(3)]
    for (audio_a, captions_a), (audio_b, captions_b) in zip(expected, got):
        assert captions_a == captions_b
        np.testing.assert_array_equal(audio_a.numpy(), audio_b.numpy())
    assert state["skipped"] == 1  # the corrupt record lies within the first 4 batches (8 good records + 1)
