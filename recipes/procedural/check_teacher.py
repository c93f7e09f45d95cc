"""Re-run train_teacher.py's closing check on a saved teacher pipeline folder (the bundled one, or a stage-3 output):
how much its denoiser uses the captions, how well its Heun-40 samples follow held-out prompts, and how far the samples
of fade prompts fade.

    python -m recipes.procedural.check_teacher --teacher assets/soundctm-demo/teacher --data runs/procedural/data --per-prompt
"""

import argparse
import json

import torch

from soundctm import SoundCTMPipeline

from .train_teacher import check_teacher


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher pipeline folder")
    parser.add_argument("--data", required=True, help="the recipe's data folder (its test split is used)")
    parser.add_argument("--labels", default=None, help="only the classes whose label matches this regex")
    parser.add_argument("--omegas", default=None, help="CFG scales ω, comma-separated (default: the teacher's own); empty: only the denoising check")
    parser.add_argument("--per-prompt", action="store_true", help="also list what the evaluator measured in each sample")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = SoundCTMPipeline.from_pretrained(args.teacher, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    omegas = [pipe.default_guidance_scale] if args.omegas is None else [float(w) for w in args.omegas.split(",") if w]
    result = {"teacher": args.teacher, **check_teacher(pipe, args.data, omegas, args.labels, per_prompt=args.per_prompt)}
    for key, rows in result.items():
        if key.endswith("_per_prompt"):
            print(f"{key}:")
            for row in rows:
                print(f"  {'✓' if row['matched'] else '✗'} {row['prompt']!r}: measured {row['measured']}, jitter "
                      f"{row['pitch_jitter']} oct, centroid {row['centroid_hz']:.0f} Hz, pulsed {row['pulsed_fraction']}, "
                      f"fade {row['fade_db']} dB, trend {row['trend_oct']} oct")  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_per_prompt")}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
