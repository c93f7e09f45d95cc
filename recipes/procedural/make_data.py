"""Writes the procedural sound-effect dataset: WAV clips + captions, deterministic from a seed.

    python -m recipes.procedural.make_data --out runs/procedural/data --seed 0

Layout (each split is both a `datasets` "audiofolder" and a plain manifest):

    OUT/train/metadata.jsonl   one record per clip: file_name (relative to the split folder), caption, label,
    OUT/train/audio/*.wav      and the class attributes (source, pitch, envelope, rate, direction, colour)
    OUT/test/...               fresh clips captioned with the held-out paraphrase templates only

    load_dataset("audiofolder", data_dir=OUT)                      # decodes with torchcodec
    load_dataset("json", data_files={"train": "OUT/train/metadata.jsonl"})  # paths only; decode with soundfile

Clip i of class c in split k is drawn from `np.random.default_rng([seed, k, c, i])`, so a file's content does not
depend on how many clips are written.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from .sounds import SAMPLING_RATE, all_classes, caption, class_name, synthesize

SPLITS = {"train": 0, "test": 1}
ATTRIBUTE_COLUMNS = ("source", "pitch", "envelope", "rate", "direction", "colour")


def clip_record(split: str, class_index: int, index: int, seed: int) -> tuple[dict, np.ndarray]:
    """(metadata record, audio) of one clip; test clips get held-out captions."""
    attributes = all_classes()[class_index]
    rng = np.random.default_rng([seed, SPLITS[split], class_index, index])
    audio = synthesize(attributes, rng)
    record = {
        "file_name": f"audio/{class_index:02d}_{index:04d}.wav",
        "caption": caption(attributes, rng, held_out=split == "test"),
        "label": class_name(attributes),
    }
    record.update({column: attributes.get(column) for column in ATTRIBUTE_COLUMNS})
    return record, audio


def write_split(out: Path, split: str, per_class: int, seed: int) -> int:
    folder = out / split
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    records = []
    for class_index in range(len(all_classes())):
        for index in range(per_class):
            record, audio = clip_record(split, class_index, index, seed)
            sf.write(folder / record["file_name"], audio, SAMPLING_RATE, subtype="PCM_16")
            records.append(record)
    with open(folder / "metadata.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return len(records)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=48, help="training clips per class (34 classes)")
    parser.add_argument("--test-per-class", type=int, default=4, help="test clips per class, held-out captions")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        count = write_split(out, split, per_class, args.seed)
        print(f"{split}: {count} clips in {out / split}")


def read_split(data_dir: str | Path, split: str) -> tuple[list[dict], np.ndarray]:
    """(records, audio) of a written split: audio is int16 (clips, samples), in metadata order."""
    folder = Path(data_dir) / split
    with open(folder / "metadata.jsonl") as f:
        records = [json.loads(line) for line in f]
    if not records:
        raise ValueError(f"{folder / 'metadata.jsonl'} lists no clips")
    audio = np.stack([sf.read(folder / r["file_name"], dtype="int16")[0] for r in records])
    return records, audio


if __name__ == "__main__":
    main()
