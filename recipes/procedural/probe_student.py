"""Does the distilled student's jump generalise, or has it learnt the trajectories it was trained on?

The demo student learns the teacher's solve from M solved trajectories (`--num_teacher_trajectories`, 2048 in the
recipe): M noises with their captions and ω. This probe takes K of those trajectories and, beside them, K new ones:
the same captions and ω from fresh noise, solved by the same function on the same grid (distill/trajectories.py).
For each set it measures the student (γ = 0, ν = 1) against the teacher's solution from the same noise at 1 and 16
steps: the relative squared error of the latents, and the evaluator's prompt adherence of the decoded clips (the
teacher's own solutions scored too). Equal figures on both sets: the student generalises, and what holds its jump
back is the fit itself. Much better figures on the trained noise: it has learnt those trajectories, and more of them
is the remedy.

    python -m recipes.procedural.probe_student --student assets/soundctm-demo/student \
        --teacher assets/soundctm-demo/teacher \
        --trajectories runs/procedural/student/teacher_trajectories
"""

import argparse
import json
import time

import numpy as np
import torch

from distill.teacher import make_teacher, teacher_ctm_scheduler
from distill.trajectories import TeacherTrajectories, read_metadata, read_trajectories, solve_trajectories
from soundctm import SoundCTMPipeline

from .evaluate import accuracy


def student_solutions(pipe, captions, omega, noise, steps: int) -> torch.Tensor:
    """The student's γ = 0, ν = 1 result in `steps` jumps from unit noise `noise`, each with its own caption and ω."""
    out = [
        pipe(caption, num_inference_steps=steps, guidance_scale=float(w), latents=z[None], gamma=0.0, output_type="latent").audios
        for caption, w, z in zip(captions, omega, noise)
    ]
    return torch.cat(out).float()


def relative_error(estimate: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over samples of ‖estimate − target‖² / ‖target‖²."""
    dims = tuple(range(1, target.ndim))
    return float((((estimate - target) ** 2).sum(dims) / (target**2).sum(dims)).mean())


def decoded(pipe, latents: torch.Tensor) -> list[np.ndarray]:
    num_samples = pipe.latent_frames * pipe.vae.hop_length
    with torch.no_grad():
        return [a for a in pipe.decode_latents(latents, num_samples).cpu().numpy()]


def probe(student, teacher_pipe, trajectories: TeacherTrajectories, settings: dict, count: int, seed: int, steps=(1, 16)) -> dict:
    sigmas = torch.tensor(settings["sigmas"], dtype=torch.float32)
    keep = [j for j, caption in enumerate(trajectories.captions) if caption][:count]  # conditional trajectories only
    captions, omega = [trajectories.captions[j] for j in keep], trajectories.omega[keep]
    trained_start, trained_end = trajectories.points[keep, 0], trajectories.points[keep, -1]
    # New trajectories: the same captions and ω from fresh noise, solved as the trainer solved its own.
    teacher = make_teacher(teacher_pipe.transformer, teacher_ctm_scheduler(teacher_pipe.scheduler.config))
    uncond = teacher_pipe.encode_text([""], torch.device("cpu"), return_mask=True)
    start = time.perf_counter()
    fresh = solve_trajectories(
        teacher, teacher_pipe, captions, omega, sigmas, tuple(settings["latent_shape"]),
        torch.Generator().manual_seed(seed), uncond_embeds=uncond,
    )  # fmt: skip
    solve_s = time.perf_counter() - start
    sets = {"trained noise": (trained_start, trained_end), "fresh noise": (fresh[:, 0], fresh[:, -1])}
    result = {"count": len(keep), "solve_s": round(solve_s, 1), "sets": {}}
    for name, (start_points, end_points) in sets.items():
        row = {"teacher_adherence": accuracy(decoded(student, end_points), captions)}
        noise = start_points / float(sigmas[0])  # the pipeline scales unit noise by σ_max
        for n in steps:
            latents = student_solutions(student, captions, omega, noise, n)
            row[f"error_{n}"] = relative_error(latents, end_points)
            row[f"adherence_{n}"] = accuracy(decoded(student, latents), captions)
        result["sets"][name] = row
    return result


def markdown(result: dict, steps=(1, 16)) -> str:
    head = "| noise | teacher adherence | " + " | ".join(f"{n}-step error | {n}-step adherence" for n in steps) + " |"
    lines = [head, "|---" * (2 + 2 * len(steps)) + "|"]
    for name, row in result["sets"].items():
        cells = [f"{row[f'error_{n}']:.3f} | {100 * row[f'adherence_{n}']:.1f} %" for n in steps]
        lines.append(f"| {name} | {100 * row['teacher_adherence']:.1f} % | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="student pipeline folder (distill/train.py, or a bundle's)")
    parser.add_argument("--teacher", required=True, help="the teacher pipeline folder the trajectories were solved with")
    parser.add_argument("--trajectories", required=True, help="the run's teacher_trajectories folder")
    parser.add_argument("--count", type=int, default=128, help="trajectories per set (conditional ones)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the fresh noise")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    torch.set_num_threads(args.threads)
    student = SoundCTMPipeline.from_pretrained(args.student, dtype=torch.float32)
    teacher_pipe = SoundCTMPipeline.from_pretrained(args.teacher, dtype=torch.float32)
    if not student.is_student or teacher_pipe.is_student:
        raise ValueError("--student must be a SoundCTM student pipeline and --teacher its teacher")
    for pipe in (student, teacher_pipe):
        pipe.set_progress_bar_config(disable=True)
    metadata = read_metadata(args.trajectories)
    trajectories = read_trajectories(args.trajectories, metadata=metadata)
    with torch.no_grad():
        result = probe(student, teacher_pipe, trajectories, metadata["settings"], args.count, args.seed)
    result.update(student=args.student, teacher=args.teacher, trajectories=args.trajectories)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
