"""The quality table of the bundled demo model: a small-scale analogue of the paper's Tables 3 and 7 and Figure 5,
measured with the recipe's analytic evaluator (recipes/procedural/evaluate.py, signal processing only).

On the test split of the procedural dataset (held-out paraphrases, 4 clips per class, 136 prompts), prompt i
always starts from the noise of seed i, so every row sees the same prompts and the same noise:

  1. teacher EDM Heun-40 (CFG ω) against the student at 1, 2, 4, 8, 16 steps (γ = 0, ν = 1): prompt-adherence
     accuracy (every attribute the prompt names is measured in the clip), the share of named attributes matched
     (`evaluate.attribute_accuracy`, partial adherence), Fréchet distance to the real test clips
     on the evaluator's 24-number feature vector, and wall time against the teacher's (same process, same batches;
     sampling alone and with the VAE decode), and the clips' mean level and share that reach full scale (clipping).
     Reference rows: the real clips themselves, another draw of real clips
     of the same classes (the Fréchet distance's noise floor), and the VAE's reconstructions (its ceiling).
  2. content preservation (Table 7): the distance between the 1-step and the 16-step result from the same noise
     for γ = 0, 0.2, 0.5, 1, by two measures: the log-mel distance (dB, `evaluate.content_distance`) and the cosine
     distance of the codec's latents (`train_codec.latent_distance`, in the place of the paper's CLAP-LPAPS);
     beside them the 1-step results of the same prompt from two seeds' noise (what "another sound" is), the 1-step
     results of neighbouring prompts, two unrelated real clips of the same class, and real clips against their codec
     reconstructions.
  3. ν at 8 steps (Figure 5): ν = 1, 2, 5.

    python benchmarks/bench_quality.py --data runs/procedural/data              # the bundled student and teacher
    python benchmarks/bench_quality.py --data runs/procedural/data --per-class 1  # quicker, 34 prompts

Prints markdown (for the README) and writes the numbers as JSON (--json).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recipes.procedural.common import seeded_noise  # noqa: E402
from recipes.procedural.evaluate import (  # noqa: E402
    accuracy,
    attribute_accuracy,
    content_distance,
    features,
    frechet_distance,
    full_scale_share,
    mean_level_db,
    score,
)
from recipes.procedural.make_data import read_split  # noqa: E402
from recipes.procedural.sounds import all_classes, class_name, synthesize  # noqa: E402
from recipes.procedural.train_codec import latent_distance, reconstruct  # noqa: E402

from soundctm import SoundCTMPipeline  # noqa: E402

ASSETS = os.path.join(ROOT, "assets", "soundctm-demo")
STUDENT_STEPS = (1, 2, 4, 8, 16)
GAMMAS = (0.0, 0.2, 0.5, 1.0)
NUS = (1.0, 2.0, 5.0)


@torch.no_grad()
def sample(pipe, prompts, batch_size, seed_offset: int = 0, **kwargs) -> tuple[list[np.ndarray], float, float]:
    """(clips, seconds of sampling, seconds of VAE decoding); prompt i starts from the noise of seed i + seed_offset."""
    clips, t_sample, t_decode = [], 0.0, 0.0
    full = pipe.transformer.config.sample_size * pipe.vae.hop_length
    for i in range(0, len(prompts), batch_size):
        seeds = range(seed_offset + i, seed_offset + min(i + batch_size, len(prompts)))
        generator = [torch.Generator().manual_seed(10_000 + s) for s in seeds]  # only γ > 0 draws from these
        start = time.perf_counter()
        latents = pipe(prompts[i : i + batch_size], latents=seeded_noise(pipe, seeds), generator=generator,
                       output_type="latent", **kwargs).audios  # fmt: skip
        t_sample += time.perf_counter() - start
        start = time.perf_counter()
        audio = pipe.decode_latents(latents, full)
        t_decode += time.perf_counter() - start
        clips.extend(a[0].numpy() for a in audio)
    return clips, t_sample, t_decode


def quality(clips, prompts, real_features) -> dict:
    return {
        "accuracy": accuracy(clips, prompts),
        "attributes": attribute_accuracy(clips, prompts),
        "frechet": frechet_distance(np.stack([features(c) for c in clips]), real_features),
        "level_db": mean_level_db(clips),
        "full_scale": full_scale_share(clips),
    }


def mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def per_source_accuracy(clips, records) -> dict:
    hits = {}
    for clip, record in zip(clips, records):
        hits.setdefault(record["source"], []).append(score(clip, record["caption"])[0])
    return {source: float(np.mean(v)) for source, v in hits.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder written by recipes/procedural/make_data.py")
    parser.add_argument("--student", default=os.path.join(ASSETS, "student"))
    parser.add_argument("--teacher", default=os.path.join(ASSETS, "teacher"))
    parser.add_argument("--per-class", type=int, default=4, help="test prompts per class (34 classes)")
    parser.add_argument("--omega", type=float, default=None,
                        help="ω: the teacher's CFG scale, the student's input (default: the teacher's own, 2 for the demo)")
    parser.add_argument("--teacher-steps", type=int, default=40)
    parser.add_argument("--student-steps", default=",".join(map(str, STUDENT_STEPS)),
                        help="the student's step counts, comma-separated; must include 1, 8 and 16 (content "
                        "preservation compares 1 and 16, ν runs at 8). 17 = the 18-point training grid exactly")
    parser.add_argument("--batch-size", type=int, default=34)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    try:
        student_steps = sorted({int(n) for n in args.student_steps.split(",")})
    except ValueError:
        parser.error(f"--student-steps must be comma-separated integers, got {args.student_steps!r}")
    if not {1, 8, 16} <= set(student_steps) or student_steps[0] < 1:
        parser.error(f"--student-steps must be positive and include 1, 8 and 16, got {args.student_steps!r}")
    torch.set_num_threads(args.threads)
    start = time.time()

    records, audio = read_split(args.data, "test")
    taken, keep = {}, []
    for i, r in enumerate(records):
        if taken.get(r["label"], 0) < args.per_class:
            taken[r["label"]] = taken.get(r["label"], 0) + 1
            keep.append(i)
    records, audio = [records[i] for i in keep], audio[keep]
    prompts = [r["caption"] for r in records]
    real = [a.astype(np.float32) / 32768.0 for a in audio]
    real_features = np.stack([features(c) for c in real])
    by_label = {class_name(c): c for c in all_classes()}
    other_draw = [synthesize(by_label[r["label"]], np.random.default_rng([777, i])) for i, r in enumerate(records)]

    teacher = SoundCTMPipeline.from_pretrained(args.teacher)
    student = SoundCTMPipeline.from_pretrained(args.student)
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    if teacher.is_student or not student.is_student:
        raise ValueError("--teacher must be a teacher pipeline and --student a student pipeline")
    if args.omega is None:
        args.omega = teacher.default_guidance_scale

    results = {"prompts": len(prompts), "omega": args.omega}
    rows = {"real clips (test split)": {**quality(real, prompts, real_features)},
            "real clips, another draw": quality(other_draw, prompts, real_features)}  # fmt: skip
    recon = reconstruct(student.vae, audio)
    rows["VAE reconstruction"] = quality(recon, prompts, real_features)

    teacher_clips, t_s, t_d = sample(teacher, prompts, args.batch_size, num_inference_steps=args.teacher_steps,
                                     guidance_scale=args.omega)  # fmt: skip
    teacher_row = f"teacher, Heun {args.teacher_steps} (ω {args.omega:g})"
    rows[teacher_row] = {**quality(teacher_clips, prompts, real_features), "sample_s": t_s, "decode_s": t_d}
    sources = {teacher_row: per_source_accuracy(teacher_clips, records)}
    student_clips = {}
    for steps in student_steps:
        clips, s_s, s_d = sample(student, prompts, args.batch_size, num_inference_steps=steps, guidance_scale=args.omega)
        student_clips[steps] = clips
        name = f"student, {steps} step{'s' if steps > 1 else ''} (γ 0, ν 1)"
        rows[name] = {**quality(clips, prompts, real_features), "sample_s": s_s, "decode_s": s_d}
        if steps in (1, 16):
            sources[name] = per_source_accuracy(clips, records)
        print(f"{name}: {rows[name]}  ({(time.time() - start) / 60:.1f} min)", file=sys.stderr, flush=True)
    for row in rows.values():
        if "sample_s" in row:
            row["time_ratio"] = row["sample_s"] / rows[teacher_row]["sample_s"]
            row["time_ratio_with_decode"] = (row["sample_s"] + row["decode_s"]) / (t_s + t_d)
    results["generation"] = rows
    results["per_source_accuracy"] = sources

    # Content preservation: 1 step vs 16 steps from the same noise, by two distances (log-mel dB, VAE-latent cosine).
    pairs = {}
    for gamma in GAMMAS:
        refined = student_clips[16] if gamma == 0 else sample(student, prompts, args.batch_size, num_inference_steps=16,
                                                               guidance_scale=args.omega, gamma=gamma)[0]  # fmt: skip
        pairs[f"γ = {gamma:g}"] = (student_clips[1], refined)
    other_seed = sample(student, prompts, args.batch_size, seed_offset=1000, num_inference_steps=1,
                        guidance_scale=args.omega)[0]  # fmt: skip
    pairs["1-step results of the same prompt from two seeds"] = (student_clips[1], other_seed)
    pairs["1-step results of neighbouring prompts (other noise)"] = (student_clips[1], student_clips[1][1:] + student_clips[1][:1])
    pairs["two unrelated real clips of the same class"] = (real, other_draw)
    pairs["real clip vs its VAE reconstruction"] = (real, recon)
    results["content_preservation_db"] = {n: mean_std([content_distance(a, b) for a, b in zip(*p)]) for n, p in pairs.items()}
    results["content_preservation_latent"] = {n: mean_std(latent_distance(student.vae, *p)) for n, p in pairs.items()}

    nu_rows = {}
    for nu in NUS:
        clips = student_clips[8] if nu == 1 else sample(student, prompts, args.batch_size, num_inference_steps=8,
                                                        guidance_scale=args.omega, nu=nu)[0]  # fmt: skip
        nu_rows[f"ν = {nu:g}"] = quality(clips, prompts, real_features)
    results["nu_8_steps"] = nu_rows
    results["minutes"] = round((time.time() - start) / 60, 1)

    print(markdown(results, teacher_row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def level(row: dict) -> str:
    """Mean level of the clips (dB re full scale) and the share of clips that reach full scale, as two cells."""
    return f"{row['level_db']:.1f} | {100 * row['full_scale']:.0f} %"


def markdown(results: dict, teacher_row: str) -> str:
    rows = results["generation"]
    teacher_acc = rows[teacher_row]["accuracy"]
    lines = [
        f"Held-out paraphrases, {results['prompts']} prompts, prompt i from the noise of seed i, ω = {results['omega']:g}.",
        "",
        "| | prompt adherence ↑ | attributes matched ↑ | Fréchet distance ↓ | level (dB) | at full scale | time vs teacher (sampling) | (with VAE decode) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        ratio = f"{row['time_ratio']:.3f}" if "time_ratio" in row else "–"
        ratio_d = f"{row['time_ratio_with_decode']:.3f}" if "time_ratio" in row else "–"
        lines.append(f"| {name} | {100 * row['accuracy']:.1f} % | {100 * row['attributes']:.1f} % | {row['frechet']:.2f} | {level(row)} | {ratio} | {ratio_d} |")
    one, sixteen = rows["student, 1 step (γ 0, ν 1)"]["accuracy"], rows["student, 16 steps (γ 0, ν 1)"]["accuracy"]
    pres, latent = results["content_preservation_db"], results["content_preservation_latent"]

    def half(table):
        g0, g1, seeds = table["γ = 0"][0], table["γ = 1"][0], table["1-step results of the same prompt from two seeds"][0]
        met = g0 <= 0.5 * g1 and g0 < seeds
        return f"{g0:.2f} vs {g1:.2f}, two seeds {seeds:.2f} ({'met' if met else 'missed'})"

    lines += [
        "",
        "Targets: student 1-step accuracy ≥ 90 % of the teacher's: "
        f"{100 * one / max(teacher_acc, 1e-9):.0f} % ({'met' if one >= 0.9 * teacher_acc else 'missed'}); "
        f"16 steps ≥ the teacher's: {100 * sixteen:.1f} % vs {100 * teacher_acc:.1f} % "
        f"({'met' if sixteen >= teacher_acc else 'missed'}); γ = 0's 1-vs-16 distance ≤ half of γ = 1's and below two seeds': "
        f"log-mel {half(pres)}, VAE latent {half(latent)}.",
        "",
        "Content preservation (Table 7): distance between the 1-step and the 16-step result from the same noise "
        "(mean ± std over prompts): log-mel (dB, top 40 dB) and the cosine distance of the VAE encoder's latents "
        "(0 = same, ~1 = unrelated)",
        "",
        "| | log-mel distance (dB) ↓ | VAE-latent distance ↓ |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {m:.2f} ± {s:.2f} | {latent[name][0]:.3f} ± {latent[name][1]:.3f} |" for name, (m, s) in pres.items()]
    lines += ["", "ν at 8 steps (γ 0)", "", "| | prompt adherence ↑ | attributes matched ↑ | Fréchet distance ↓ | level (dB) | at full scale |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {100 * r['accuracy']:.1f} % | {100 * r['attributes']:.1f} % | {r['frechet']:.2f} | {level(r)} |" for n, r in results["nu_8_steps"].items()]
    src = results["per_source_accuracy"]
    names = list(src)
    lines += ["", "Prompt adherence by source", "", "| source | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for source in sorted(next(iter(src.values()))):
        lines.append(f"| {source} | " + " | ".join(f"{100 * src[n][source]:.0f} %" for n in names) + " |")
    lines.append(f"\n({results['minutes']} min on this machine)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
