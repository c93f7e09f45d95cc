"""Streaming training data (distill/data.py): decoding to mono at the VAE's rate with a real resampler, random
crops, corrupt records skipped and counted, manifests and audio folders giving the same examples, the stream split by
rank, exact resumption, and clear errors for missing columns and empty streams; for a stereo VAE, stereo clips kept
(one crop window for both channels), mono clips duplicated and counted, stereo batches and stereo mixing."""

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


# ------------------------------------------------------------------------------------------ stereo (Stable Audio Open)
def test_a_stereo_source_keeps_its_two_channels_in_one_crop_window():
    t = np.arange(3000) / RATE
    sine_left = np.stack([0.4 * np.sin(2 * np.pi * 1000 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    out = prepare_waveform(sine_left, RATE, RATE, 1024, np.random.default_rng(0), channels=2)
    assert out.shape == (2, 1024) and out.dtype == np.float32
    assert np.all(out[1] == 0) and np.abs(out[0]).max() > 0.39  # the right channel stays silent, not averaged in
    # One random offset for both channels: the right channel is the left one shifted by a constant.
    ramp = np.arange(5000, dtype=np.float32)
    two = np.stack([ramp, ramp + 10000], axis=1)
    for seed in range(10):
        out = prepare_waveform(two, RATE, RATE, 128, np.random.default_rng(seed), channels=2)
        np.testing.assert_array_equal(out[1] - out[0], 10000)
        np.testing.assert_array_equal(np.diff(out[0]), 1)
        # the same window as mono with the same generator: the crop draws the same offset
        mono = prepare_waveform(two[:, :1], RATE, RATE, 128, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[0], mono)
    starts = {prepare_waveform(two, RATE, RATE, 128, np.random.default_rng(s), channels=2)[0, 0] for s in range(20)}
    assert len(starts) > 10  # random windows
    assert prepare_waveform(two, RATE, RATE, 128, np.random.default_rng(0), random_crop=False, channels=2)[0, 0] == 0
    # More than two channels: the first two, not a downmix.
    surround = np.stack([ramp, ramp + 10000, np.full_like(ramp, 7.0), -ramp], axis=1)
    out = prepare_waveform(surround, RATE, RATE, 128, np.random.default_rng(1), channels=2)
    first_two = prepare_waveform(surround[:, :2], RATE, RATE, 128, np.random.default_rng(1), channels=2)
    np.testing.assert_array_equal(out, first_two)
    # Short: both channels zero-padded at the end.
    short = np.ones((50, 2), np.float32) * [1, -1]
    short = prepare_waveform(short, RATE, RATE, 128, np.random.default_rng(0), channels=2)
    assert np.all(short[0, :50] == 1) and np.all(short[1, :50] == -1) and np.all(short[:, 50:] == 0)


def test_a_mono_source_is_duplicated_to_both_channels_for_a_stereo_vae():
    rng = np.random.default_rng(0)
    clip = (0.1 + 0.2 * rng.standard_normal((3000, 1))).astype(np.float32)
    for peak in (None, 0.5):
        stereo = prepare_waveform(clip, 22050, RATE, 2048, np.random.default_rng(5), peak_normalize=peak, channels=2)
        mono = prepare_waveform(clip, 22050, RATE, 2048, np.random.default_rng(5), peak_normalize=peak)
        assert stereo.shape == (2, 2048) and stereo.dtype == np.float32
        np.testing.assert_array_equal(stereo[0], mono)
        np.testing.assert_array_equal(stereo[1], mono)


def test_a_stereo_source_is_resampled_channel_by_channel_with_a_real_resampler():
    rate, n = 16000, 4000
    t = np.arange(n) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 1000 * t)], axis=1).astype(np.float32)
    out = prepare_waveform(stereo, rate, RATE, 8000, np.random.default_rng(0), random_crop=False, channels=2)
    assert out.shape == (2, 8000) and out.dtype == np.float32
    for channel, frequency in ((0, 440), (1, 1000)):
        expected = resample_poly(stereo[:, channel].astype(np.float64), 441, 160)[:8000]
        np.testing.assert_allclose(out[channel, 200:7800], expected[200:7800], atol=2e-3)
        spectrum = np.abs(np.fft.rfft(out[channel]))
        assert abs(np.argmax(spectrum) * RATE / 8000 - frequency) < 6


def test_peak_normalize_of_a_stereo_window_removes_each_channels_mean_and_scales_both_together():
    rng = np.random.default_rng(0)
    clip = np.stack([0.1 + 0.05 * rng.standard_normal(400), -0.2 + 0.01 * rng.standard_normal(400)], axis=1)
    clip = clip.astype(np.float32)
    out = prepare_waveform(clip, RATE, RATE, 400, rng, random_crop=False, peak_normalize=0.5, channels=2)
    centred = (clip - clip.mean(axis=0)).T
    np.testing.assert_allclose(out, 0.5 * centred / np.abs(centred).max(), rtol=1e-5, atol=1e-6)
    assert abs(np.abs(out).max() - 0.5) < 1e-6 and np.all(np.abs(out.mean(axis=1)) < 1e-6)
    assert np.abs(out[1]).max() < 0.3  # the quiet channel stays quiet: one gain for both channels
    silent = prepare_waveform(np.zeros((400, 2), np.float32), RATE, RATE, 400, rng, peak_normalize=0.5, channels=2)
    assert silent.shape == (2, 400) and np.all(silent == 0)


def test_a_channel_count_other_than_mono_or_stereo_is_refused(data_dir):
    for channels in (0, 3, 6, 1.5, "2"):
        with pytest.raises(ValueError, match=r"channels must be one of \(1, 2\)"):
            prepare_waveform(np.zeros((10, 2), np.float32), RATE, RATE, 8, np.random.default_rng(0), channels=channels)
        with pytest.raises(ValueError, match=r"channels must be one of \(1, 2\)"):
            stream_of(os.path.join(data_dir, "metadata.jsonl"), channels=channels)


def test_a_stereo_stream_gives_stereo_batches_and_counts_the_duplicated_mono_clips(data_dir, caplog):
    """The fixture's even clips are mono, its odd clips stereo (right = -0.5 x left)."""
    import torch

    source = os.path.join(data_dir, "metadata.jsonl")
    stream = stream_of(source, channels=2)
    with caplog.at_level("INFO", logger="distill.data"):
        audio, captions = stream.next_batch(8)
    assert audio.shape == (8, 2, LENGTH) and audio.dtype == torch.float32
    assert captions == [f"caption {i}" for i in range(8)]
    assert stream.upmixed == 4 and stream.state_dict()["upmixed"] == 4
    assert sum("duplicated to both channels" in r.getMessage() for r in caplog.records) == 1  # logged once only
    for i in range(8):
        left, right = audio[i, 0].numpy(), audio[i, 1].numpy()
        if i % 2 == 0:
            np.testing.assert_array_equal(left, right)
        else:
            np.testing.assert_allclose(right, -0.5 * left, atol=2e-4)  # 16-bit WAVs: each channel quantised
            assert np.abs(left).max() > 0
        file_audio, rate = sf.read(os.path.join(data_dir, f"clip{i}.wav"), dtype="float32", always_2d=True)
        if len(file_audio) * RATE / rate < LENGTH:  # no crop: the whole clip
            expected = prepare_waveform(file_audio, rate, RATE, LENGTH, np.random.default_rng(0), False, channels=2)
            np.testing.assert_array_equal(audio[i].numpy(), expected)
    # A mono stream of the same data: the channel mean, nothing upmixed, and its examples are unchanged by stereo.
    mono_stream = stream_of(source)
    mono, _ = mono_stream.next_batch(8)
    assert mono.shape == (8, 1, LENGTH) and mono_stream.upmixed == 0
    np.testing.assert_array_equal(mono[0::2, 0].numpy(), audio[0::2, 0].numpy())


def test_a_stereo_stream_resumes_with_its_upmix_count_and_reads_older_states(data_dir):
    source = os.path.join(data_dir, "metadata.jsonl")
    stream = stream_of(source, shuffle_buffer_size=3, channels=2)
    stream.next_batch(5)
    state = stream.state_dict()
    assert state["upmixed"] == stream.upmixed > 0
    continued = [stream.next_batch(3) for _ in range(4)]  # across block and epoch boundaries
    resumed = stream_of(source, shuffle_buffer_size=3, channels=2)
    resumed.load_state_dict(state)
    assert resumed.upmixed == state["upmixed"]
    again = [resumed.next_batch(3) for _ in range(4)]
    for (audio_a, captions_a), (audio_b, captions_b) in zip(continued, again):
        assert captions_a == captions_b
        np.testing.assert_array_equal(audio_a.numpy(), audio_b.numpy())
    assert resumed.upmixed == stream.upmixed and resumed.skipped == stream.skipped
    older = {k: v for k, v in state.items() if k != "upmixed"}  # a checkpoint from before stereo support
    old = stream_of(source, shuffle_buffer_size=3, channels=2)
    old.load_state_dict(older)
    assert old.upmixed == 0
    np.testing.assert_array_equal(old.next_batch(3)[0].numpy(), continued[0][0].numpy())


def test_mix_augment_mixes_stereo_clips_with_one_gain_for_both_channels():
    import torch

    from distill.data import a_weighted_gain_db, mix_augment

    t = np.arange(4096) / 16000
    low, high = 0.5 * np.sin(2 * np.pi * 500 * t), 0.05 * np.sin(2 * np.pi * 2000 * t)
    silent = np.zeros_like(t)
    # left-only, right-only and centred clips
    stereo = np.stack([[low, silent], [silent, high], [0.2 * low, 0.2 * low]]).astype(np.float32)
    audio = torch.from_numpy(stereo)
    captions = ["A dog barks", "Rain falls", "Wind"]
    out, texts = mix_augment(audio, captions, 3, 16000, torch.Generator().manual_seed(0), peak=0.5)
    assert out.shape == (6, 2, 4096) and torch.equal(out[:3], audio) and texts[:3] == captions
    assert abs(float(out[3:].abs().max()) - 0.5) < 1e-6
    # A stereo clip's loudness is that of its channel mean.
    assert a_weighted_gain_db(stereo[0], 16000) == a_weighted_gain_db(stereo[0].mean(axis=0), 16000)
    # The left-only and right-only clips keep their sides in their mix, brought to equal loudness (±3 dB).
    pair = [k for k, text in enumerate(texts) if text == "A dog barks and rain falls"][0]
    spectrum_left, spectrum_right = (np.abs(np.fft.rfft(out[pair, c].numpy())) for c in (0, 1))
    level = lambda spectrum, f: spectrum[int(round(f * len(t) / 16000))]  # noqa: E731
    assert level(spectrum_left, 2000) < 1e-3 * level(spectrum_left, 500)
    assert level(spectrum_right, 500) < 1e-3 * level(spectrum_right, 2000)
    assert 0.5 < level(spectrum_left, 500) / level(spectrum_right, 2000) < 2
    # Identical channels mix as the mono clips do (the same gains), and the same pairs are drawn.
    centred = torch.from_numpy(np.repeat(np.stack([low, high, 0.2 * low])[:, None], 2, axis=1).astype(np.float32))
    mono_out, mono_texts = mix_augment(centred[:, :1], captions, 2, 16000, torch.Generator().manual_seed(0), peak=0.5)
    stereo_out, stereo_texts = mix_augment(centred, captions, 2, 16000, torch.Generator().manual_seed(0), peak=0.5)
    assert stereo_texts == mono_texts
    np.testing.assert_allclose(stereo_out[:, 0].numpy(), mono_out[:, 0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(stereo_out[:, 0].numpy(), stereo_out[:, 1].numpy())
    with pytest.raises(ValueError, match="batch, channels, samples"):
        mix_augment(audio[:, 0], captions, 2, 16000, torch.Generator())
