"""Teacher trajectories solved once per run and reused by every step (`--num_teacher_trajectories`).

Line 9 of Algorithm 2 solves the guided teacher ODE from t to u at every step: k Heun steps, two network calls each,
on a batch of 2B rows (CFG). That is most of a step's cost (60 % at k ≤ 6 on the demo model; 80 % with the authors'
k ≤ N − 1), and it is why a CPU or a small GPU budget caps k. With `--num_teacher_trajectories M`, the trainer
instead solves M whole trajectories once, before its first step: from z_{t_0} = t_0·ε (t_0 = σ_max) along the training
grid t_0 > ... > t_{N-1}, with the same guided Heun steps as line 9, each with its own caption (from the dataset, "" with
probability `p_uncond`, as line 4) and ω ~ U[ω_min, ω_max]. A step then draws trajectories and grid indices
n < u ≤ s as before, and z_t = trajectory[n] and Solver(z_t, t, u) = trajectory[u] are looked up: exactly the teacher's
solve, for any k, at no cost. What differs from the online solve is where z_t comes from: the teacher's own marginal
at t (its trajectories from noise) instead of z_0 + t·ε from a training clip; at t_0 = σ_max the two agree (the data
is a small fraction of z_t there). The DSM term keeps the training clips.

The M trajectories of a process (each process solves its own share, from its own part of the dataset) are kept in
memory, M × N × latent floats (the demo model: 405 KB a trajectory at N = 18), and saved to
`output_dir/teacher_trajectories/`, so that a resumed run reads them instead of solving again; a run with other
settings or another teacher solves anew.
"""

import json
import logging
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import EmptyStreamError, open_dataset_of_args, pick_caption
from .latent_cache import module_fingerprint
from .losses import drop_captions, heun_solve_cfg, sample_omega

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class TeacherTrajectories:
    """M solved trajectories: `points[j, i]` is trajectory j at grid point t_i, with caption `captions[j]` ("" = ∅)
    and CFG scale `omega[j]`."""

    points: torch.Tensor  # (M, N, *latent_shape) float32
    omega: torch.Tensor  # (M,)
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def lookup(self, index: torch.Tensor, n: torch.Tensor, u: torch.Tensor):
        """`(z_t, z_u)` = trajectories `index` at grid indices `n` and `u` (each `(B,)`)."""
        index, n, u = (i.cpu() for i in (index, n, u))
        return self.points[index, n], self.points[index, u]


def read_captions(args, count: int, rank: int, world_size: int, seed: int) -> list[str]:
    """`count` captions from this process's part of the dataset: its first `count` records (fewer if it has fewer),
    visited in a seeded random order, as many rounds as `count` needs. No audio is read."""
    dataset, _ = open_dataset_of_args(args, rank, world_size)
    if dataset.column_names is not None:
        dataset = dataset.select_columns([args.caption_column])
    values = [record[args.caption_column] for record in islice(dataset, count)]
    if not values:
        raise EmptyStreamError(f"--dataset_name {args.dataset_name!r} has no records for the teacher trajectories")
    rng = np.random.default_rng([seed, rank, 7])
    rounds = math.ceil(count / len(values))
    order = np.concatenate([rng.permutation(len(values)) for _ in range(rounds)])[:count]
    return [pick_caption(values[i], rng) for i in order]


@torch.no_grad()
def solve_trajectories(
    teacher,
    pipe,
    captions: list[str],
    omega: torch.Tensor,
    sigmas: torch.Tensor,
    latent_shape: tuple[int, ...],
    generator: torch.Generator,
    *,
    uncond_embeds,
    text_kwargs: dict | None = None,
    batch_size: int = 16,
    autocast=nullcontext,
) -> torch.Tensor:
    """The guided teacher's Heun trajectories (line 9 of Algorithm 2 one grid step at a time) from t_0·ε, one per
    caption, kept on the CPU. Returns `(M, N, *latent_shape)` float32."""
    device, num_points = sigmas.device, sigmas.shape[0]
    points = torch.empty(len(captions), num_points, *latent_shape)
    for start in range(0, len(captions), batch_size):
        texts = captions[start : start + batch_size]
        b = len(texts)
        cond, cond_mask = pipe.encode_text(texts, device, return_mask=True, **(text_kwargs or {}))
        uncond = uncond_embeds[0].expand(b, -1, -1)
        uncond_mask = None if uncond_embeds[1] is None else uncond_embeds[1].expand(b, -1)
        w = omega[start : start + b].to(device)
        z = sigmas[0] * torch.randn((b, *latent_shape), generator=generator).to(device)
        points[start : start + b, 0] = z.cpu()
        for i in range(num_points - 1):
            index = torch.full((b,), i, device=device, dtype=torch.long)
            with autocast():
                z = heun_solve_cfg(teacher, z, sigmas, index, 1, cond, uncond, w, cond_mask, uncond_mask)
            points[start : start + b, i + 1] = z.cpu()
        logger.info(f"teacher trajectories: {start + b} of {len(captions)} solved")
    return points


def trajectory_settings(args, pipe, sigmas: torch.Tensor, latent_shape, rank: int, world_size: int) -> dict:
    """What the trajectories depend on; saved with them, and compared before saved ones are reused."""
    return {
        "format": FORMAT_VERSION,
        "count": args.num_teacher_trajectories,
        "teacher": args.pretrained_teacher_model,
        "teacher_fingerprint": module_fingerprint(pipe.transformer),
        "dataset": args.dataset_name,
        "caption_column": args.caption_column,
        "sigmas": [round(float(s), 7) for s in sigmas.cpu()],
        "latent_shape": list(latent_shape),
        "omega_min": args.omega_min,
        "omega_max": args.omega_max,
        "p_uncond": args.p_uncond,
        "seed": args.seed,
        "rank": rank,
        "world_size": world_size,
    }


def trajectory_files(folder: str, rank: int) -> tuple[str, str]:
    """`(tensors, metadata)`: the paths of one process's saved trajectories in a run's `teacher_trajectories/`."""
    return tuple(os.path.join(folder, f"rank{rank}.{ext}") for ext in ("safetensors", "json"))


def read_metadata(folder: str, rank: int = 0) -> dict:
    """The saved `{"settings": ..., "captions": [...]}` of one process's trajectories."""
    with open(trajectory_files(folder, rank)[1]) as f:
        return json.load(f)


def read_trajectories(folder: str, rank: int = 0, metadata: dict | None = None) -> TeacherTrajectories:
    """One process's saved trajectories (`metadata`: its already read `read_metadata`)."""
    metadata = read_metadata(folder, rank) if metadata is None else metadata
    tensors = load_file(trajectory_files(folder, rank)[0])
    return TeacherTrajectories(tensors["points"], tensors["omega"], metadata["captions"])


def load_or_solve(args, pipe, teacher, sigmas, latent_shape, *, rank, world_size, uncond_embeds, text_kwargs, autocast):
    """This process's trajectories: read from `output_dir/teacher_trajectories/` when they were solved with the same
    settings (a resumed run), solved and saved otherwise. Draws from its own generator (seeded by --seed and the
    rank), so the run's other random draws are the same with or without trajectories."""
    folder = os.path.join(args.output_dir, "teacher_trajectories")
    path, meta_path = trajectory_files(folder, rank)
    settings = trajectory_settings(args, pipe, sigmas, latent_shape, rank, world_size)
    if os.path.isfile(path) and os.path.isfile(meta_path):
        saved = read_metadata(folder, rank)
        if saved.get("settings") == settings:
            logger.info(f"teacher trajectories: read {len(saved['captions'])} from {path}")
            return read_trajectories(folder, rank, saved)
        logger.info(f"teacher trajectories in {folder} were solved with other settings: solving again")
    count = args.num_teacher_trajectories
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + 7919 * (1 + rank))
    captions = drop_captions(read_captions(args, count, rank, world_size, args.seed), args.p_uncond, generator)
    omega = sample_omega(count, args.omega_min, args.omega_max, generator)
    points = solve_trajectories(
        teacher,
        pipe,
        captions,
        omega,
        sigmas,
        latent_shape,
        generator,
        uncond_embeds=uncond_embeds,
        text_kwargs=text_kwargs,
        batch_size=args.teacher_batch_size or 16,
        autocast=autocast,
    )
    os.makedirs(folder, exist_ok=True)
    save_file({"points": points.contiguous(), "omega": omega.contiguous()}, path + ".partial")
    with open(meta_path + ".partial", "w") as f:
        json.dump({"settings": settings, "captions": captions}, f)
    os.replace(path + ".partial", path)
    os.replace(meta_path + ".partial", meta_path)
    return TeacherTrajectories(points, omega, captions)
