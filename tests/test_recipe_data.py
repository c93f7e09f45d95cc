"""The procedural dataset: deterministic from its seed, written as folders that `datasets` loads, captions that name
the class (and parse back to it), and held-out paraphrases that training never sees."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipes.procedural.make_data import clip_record, read_split, write_split  # noqa: E402
from recipes.procedural.sounds import CLIP_SAMPLES, SAMPLING_RATE, all_captions, all_classes, class_name, parse_prompt  # noqa: E402


def test_at_least_24_distinct_nameable_classes():
    classes = all_classes()
    assert len(classes) >= 24
    assert len({class_name(c) for c in classes}) == len(classes)


def test_same_seed_same_clip_and_caption_other_seed_differs():
    record_a, audio_a = clip_record("train", 5, 3, seed=0)
    record_b, audio_b = clip_record("train", 5, 3, seed=0)
    record_c, audio_c = clip_record("train", 5, 3, seed=1)
    assert record_a == record_b
    np.testing.assert_array_equal(audio_a, audio_b)
    assert not np.array_equal(audio_a, audio_c)


def test_clips_are_full_band_mono_of_at_least_4_s_and_never_clip():
    for class_index in range(len(all_classes())):
        _, audio = clip_record("train", class_index, 0, seed=0)
        assert audio.shape == (CLIP_SAMPLES,) and audio.dtype == np.float32
        assert 0.25 < np.abs(audio).max() <= 0.8
    assert SAMPLING_RATE == 44100 and CLIP_SAMPLES / SAMPLING_RATE >= 4.0


def test_every_caption_parses_back_to_its_class_and_held_out_paraphrases_are_unseen():
    for attributes in all_classes():
        train, held_out = all_captions(attributes), all_captions(attributes, held_out=True)
        assert len(train) >= 3 and len(held_out) >= 2
        assert not train & held_out
        for caption in train | held_out:
            assert parse_prompt(caption) == attributes, caption


def test_parse_prompt_rejects_unknown_sources_and_contradictions():
    with pytest.raises(ValueError, match="names no source"):
        parse_prompt("a dog barks")
    with pytest.raises(ValueError, match="more than one value"):
        parse_prompt("a rising falling sweep")
    assert parse_prompt("a sweep") == {"source": "sweep"}  # unnamed attributes are not asked for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("procedural")
    write_split(out, "train", per_class=1, seed=0)
    write_split(out, "test", per_class=1, seed=0)
    return out


def test_written_folder_loads_as_a_manifest_and_test_captions_are_held_out(dataset):
    from datasets import load_dataset

    n = len(all_classes())
    ds = load_dataset("json", data_files={s: str(dataset / s / "metadata.jsonl") for s in ("train", "test")})
    assert ds["train"].num_rows == n and ds["test"].num_rows == n
    for split in ("train", "test"):
        for row in ds[split]:
            audio, rate = sf.read(dataset / split / row["file_name"])
            assert rate == SAMPLING_RATE and audio.shape == (CLIP_SAMPLES,)
            attributes = {k: row[k] for k in ("source", "pitch", "envelope", "rate", "direction", "colour") if row[k]}
            assert parse_prompt(row["caption"]) == attributes
            assert row["caption"] in all_captions(attributes, held_out=split == "test")
    records, audio = read_split(dataset, "test")
    assert len(records) == n and audio.shape == (n, CLIP_SAMPLES) and audio.dtype == np.int16
    with open(dataset / "train" / "metadata.jsonl") as f:
        assert json.loads(f.readline())["file_name"].startswith("audio/")


@pytest.mark.skipif(importlib.util.find_spec("torchcodec") is None, reason="audiofolder lists audio through torchcodec")
def test_written_folder_loads_as_an_audiofolder(dataset):
    from datasets import load_dataset

    ds = load_dataset("audiofolder", data_dir=str(dataset), streaming=True)
    example = next(iter(ds["test"]))
    samples = example["audio"].get_all_samples()
    assert samples.sample_rate == SAMPLING_RATE and tuple(samples.data.shape) == (1, CLIP_SAMPLES)
    assert parse_prompt(example["caption"])["source"] == example["source"]
