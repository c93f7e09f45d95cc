#!/usr/bin/env python
"""Distils a SoundCTM student from a SoundCTM teacher pipeline on a streamed audio-caption dataset: the paper's
Algorithm 2 with the settings of Appendix D (Saito et al., ICLR 2025), as an accelerate program.

    accelerate launch distill/train.py --config distill/configs/soundctm_dit.yaml \
        --pretrained_teacher_model path/or/hub-id-of-teacher --dataset_name data/train.jsonl --output_dir student

One optimisation step, per micro-batch (Algorithm 2):
  2-3  z_0 = E(x_0), standardised with the VAE's latent statistics;
  4    caption -> "" with probability p_uncond (one network learns the conditional and the unconditional student);
  5-8  ε, k ~ P(k) ∝ k, t = t_n, u = t_{n+k}, s ∈ [t_{N-1}, u] on the N-point Karras grid, ω ~ U[ω_min, ω_max];
  9    z_u = Solver(z_t, c, ω, t, u; φ): k Heun steps of the CFG-guided teacher;
  10   z_target = G_sg(θ)(z_u, c, ω, u, s): the EMA target network's jump, no gradient;
  11   z_est = G_θ(z_t, c, ω, t, s), and in the same forward the DSM prediction g_θ(z_σ, c, ω, σ, σ);
  12   L = d_teacher(z_target, z_est, c, s) + λ_DSM·L_DSM (Eqs. 5, 7-9), λ_DSM from the last layer's gradients.
Then clip, RAdam step, target EMA θ⁻ ← μθ⁻ + (1 − μ)θ (and the optional export EMA).

Settings come from a YAML file (`--config`, keys = the option names below) and the command line; flags win.
See distill/README.md for data layouts, outputs, and where this follows the paper rather than the authors' code.
"""

import argparse
import copy
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Launched as a script, this file's folder is on sys.path, not the repository root that `distill.*` lives in.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402
from accelerate.utils import DistributedType, ProjectConfiguration  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from distill.data import AudioCaptionStream, BatchPrefetcher, mix_augment, open_dataset_of_args  # noqa: E402
from distill.latent_cache import PosteriorCache  # noqa: E402
from distill.losses import (  # noqa: E402
    HEUN_STEP_STRATEGIES,
    adaptive_dsm_weight,
    append_dims,
    ctm_jump,
    d_teacher,
    drop_captions,
    dsm_loss,
    force_long_jumps,
    heun_solve_cfg,
    l2_distance,
    last_layer_weight_grad,
    sample_ctm_indices,
    sample_dsm_sigmas,
    sample_num_heun_steps,
    sample_omega,
    student_output,
)
from distill.teacher import (  # noqa: E402
    DistillationTeacher,
    load_teacher_pipeline,
    make_student,
    make_teacher,
    student_last_layer,
    teacher_ctm_scheduler,
)
from distill.trajectories import TeacherTrajectories, load_or_solve  # noqa: E402
from soundctm import CTMScheduler, SoundCTMDiTModel, SoundCTMPipeline  # noqa: E402
from soundctm.pipeline import concat_conditioning  # noqa: E402

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
DEFAULT_VALIDATION_PROMPTS = ["a dog barks", "rain falls on a roof", "a siren wails in the distance"]


# ================================================================================================ settings
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Distil a SoundCTM student from a SoundCTM teacher (Algorithm 2).")
    parser.add_argument("--config", type=str, default=None, help="YAML file of settings (keys = option names); flags win.")
    # ----------Teacher----------
    parser.add_argument(
        "--pretrained_teacher_model",
        type=str,
        default=None,
        help="Teacher SoundCTM pipeline: a folder written by save_pretrained or a Hub repo id (required).",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of the teacher on the Hub.")
    parser.add_argument("--cache_dir", type=str, default=None, help="Where downloaded models and datasets go.")
    # ----------Data----------
    parser.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A .csv/.jsonl manifest of audio paths + captions, an audiofolder directory, or a Hub dataset id (required).",
    )
    parser.add_argument("--dataset_config_name", type=str, default=None, help="Hub dataset configuration.")
    parser.add_argument("--dataset_split", type=str, default="train", help="Split of an audiofolder or Hub dataset.")
    parser.add_argument("--dataset_revision", type=str, default=None, help="Revision of a Hub dataset.")
    parser.add_argument("--audio_column", type=str, default="audio", help="Column with the audio (or its file path).")
    parser.add_argument("--caption_column", type=str, default="caption", help="Column with the caption (str or list).")
    parser.add_argument(
        "--shuffle_buffer_size",
        type=int,
        default=1000,
        help="Records are shuffled in blocks of this many (1 = stream order); resuming re-reads at most one block.",
    )
    parser.add_argument(
        "--dataloader_prefetch",
        type=int,
        default=2,
        help="Batches decoded ahead in a background thread (0 = decode in the training loop).",
    )
    parser.add_argument(
        "--random_crop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Cut a random window of clips longer than the model (else their start).",
    )
    parser.add_argument(
        "--mix_augment",
        type=int,
        default=0,
        help="TANGO's data augmentation: this many extra clips per batch, each two clips of the batch mixed at equal "
        "A-weighted loudness and captioned '<first> and <second>' (2 in the 16 kHz config; 0 = off).",
    )
    parser.add_argument(
        "--peak_normalize",
        type=float,
        default=None,
        help="Remove each training window's mean and scale it to this peak, as TANGO/AudioLDM prepare clips for "
        "their mel VAE (0.5 in the 16 kHz config); default: the clips as read.",
    )
    parser.add_argument(
        "--sample_size",
        type=int,
        default=None,
        help="Latent frames per training clip (default: the teacher's sample_size); the clip is sample_size x hop samples.",
    )
    parser.add_argument(
        "--audio_length_in_s",
        type=float,
        default=None,
        help="Training clip length in seconds instead of --sample_size; must be a whole number of VAE hops.",
    )
    parser.add_argument(
        "--compute_latent_stats",
        "--compute-latent-stats",
        action="store_true",
        help="Compute per-channel latent mean/std over --latent_stats_samples records instead of the VAE config's.",
    )
    parser.add_argument("--latent_stats_samples", type=int, default=512, help="Records for --compute_latent_stats.")
    parser.add_argument(
        "--cache_latents",
        action="store_true",
        help="Encode each distinct clip once and keep its VAE posterior in memory (for small datasets read for many "
        "epochs; a clip cropped elsewhere is another clip).",
    )
    parser.add_argument(
        "--latent_cache_dir",
        type=str,
        default=None,
        help="Also keep the cached posteriors on disk here (implies --cache_latents), one subfolder per VAE weights; "
        "another run with the same VAE reads them instead of encoding.",
    )
    # ----------Method (paper Sections 3.1-3.2, Appendix D; defaults = the authors' dit.yaml)----------
    parser.add_argument("--num_timesteps", type=int, default=40, help="N, points of the Karras training grid.")
    parser.add_argument(
        "--max_heun_steps",
        type=int,
        default=None,
        help="Cap on k, the teacher's Heun steps t -> u (default N - 1; drawn on 1..cap by --heun_step_strategy).",
    )
    parser.add_argument(
        "--heun_step_strategy",
        type=str,
        default="weighted",
        choices=HEUN_STEP_STRATEGIES,
        help="How k is drawn on 1..cap: 'weighted' P(k) ∝ k (the authors'), or 'uniform' (more short jumps).",
    )
    parser.add_argument(
        "--num_teacher_trajectories",
        type=int,
        default=0,
        help="Solve this many whole teacher trajectories (per process) before the first step and look line 9's solve "
        "up in them instead of solving it at every step (distill/trajectories.py); 0 = the online solve.",
    )
    parser.add_argument(
        "--long_jump_fraction",
        type=float,
        default=0.0,
        help="Share of the CTM samples that learn the whole jump sigma_max -> sigma_min (what a 1-step draft does) "
        "against the end of the teacher's solved trajectory (n = 0, u = s = N - 1); needs --num_teacher_trajectories. "
        "0 = the paper's draw only.",
    )
    parser.add_argument("--omega_min", type=float, default=1.0, help="ω_min of ω ~ U[ω_min, ω_max].")
    parser.add_argument("--omega_max", type=float, default=10.0, help="ω_max of ω ~ U[ω_min, ω_max].")
    parser.add_argument("--p_uncond", type=float, default=0.1, help="Probability that a caption is replaced by ''.")
    parser.add_argument(
        "--ctm_distance",
        type=str,
        default="d_teacher",
        choices=["d_teacher", "l2"],
        help="CTM loss distance at time s: d_teacher (Eq. 5) or l2 on the latents.",
    )
    parser.add_argument(
        "--dsm_weight_scale",
        type=float,
        default=0.2,
        help="Multiplies the adaptive λ_DSM (0 turns the DSM loss off).",
    )
    parser.add_argument("--max_dsm_weight", type=float, default=1e3, help="λ_DSM is clamped to [0, this].")
    parser.add_argument("--dsm_p_mean", type=float, default=-1.2, help="ln σ ~ N(mean, std²) for half the DSM batch.")
    parser.add_argument("--dsm_p_std", type=float, default=1.2)
    parser.add_argument(
        "--dsm_xi_max",
        type=float,
        default=0.7,
        help="The other half: σ on the Karras ramp at ξ ~ U[0, this].",
    )
    parser.add_argument("--ema_decay", type=float, default=0.999, help="μ of the EMA target network sg(θ).")
    # ----------Training----------
    parser.add_argument("--output_dir", type=str, default="soundctm-student", help="Checkpoints, logs and the student.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every random draw (data order, noise, t/u/s, ω).")
    parser.add_argument("--train_batch_size", type=int, default=8, help="Batch size per process.")
    parser.add_argument("--max_train_steps", type=int, default=10000, help="Optimisation steps.")
    parser.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Also stop (and save the student) once the training loop has run this long, in minutes.",
    )
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Recompute the DiT blocks in backward.")
    parser.add_argument("--learning_rate", type=float, default=8e-5)
    parser.add_argument("--adam_beta1", type=float, default=0.9, help="RAdam β1.")
    parser.add_argument("--adam_beta2", type=float, default=0.999, help="RAdam β2.")
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0)
    parser.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant",
        help='diffusers schedule: "constant", "constant_with_warmup", "linear", "cosine", ...',
    )
    parser.add_argument("--lr_warmup_steps", type=int, default=0)
    parser.add_argument("--max_grad_norm", type=float, default=1000.0, help="Gradient clipping norm.")
    parser.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Overrides `accelerate config`. The frozen teacher runs in this precision; weights stay fp32.",
    )
    parser.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs.")
    parser.add_argument(
        "--teacher_batch_size",
        type=int,
        default=None,
        help="Rows per teacher call in the Heun solve (default: all 2B, cond and '' together); smaller chunks can be "
        "faster on a CPU (benchmarks/bench_distill.py).",
    )
    parser.add_argument(
        "--use_ema",
        action="store_true",
        help="Keep a separate EMA of the student for export (diffusers EMAModel) besides the target network.",
    )
    parser.add_argument("--export_ema_decay", type=float, default=0.9999, help="Decay of the --use_ema export EMA.")
    # ----------Checkpointing----------
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable state every N steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many states.")
    parser.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='"latest" or a checkpoint folder: continue exactly (same batches, same random draws).',
    )
    # ----------Logging and validation----------
    parser.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    parser.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, inside --output_dir.")
    parser.add_argument("--tracker_project_name", type=str, default="soundctm-distill")
    parser.add_argument("--validation_steps", type=int, default=500, help="Generate validation audio every N steps.")
    parser.add_argument("--validation_prompts", type=str, nargs="*", default=DEFAULT_VALIDATION_PROMPTS)
    parser.add_argument(
        "--validation_inference_steps", type=int, nargs="*", default=[1, 16], help="Student step counts to log."
    )
    parser.add_argument(
        "--validation_guidance_scale", type=float, default=None, help="ω of the validation samples (default: the teacher pipeline's own)."
    )
    parser.add_argument("--validation_nu", type=float, default=1.0, help="ν of the validation samples.")
    # ----------Hub----------
    parser.add_argument(
        "--push_to_hub", action="store_true", help="Upload the student pipeline with its model card at the end (as hub.publish)."
    )
    parser.add_argument(
        "--hub_model_id", type=str, default=None, help="Repo id owner/name (default: the output folder's name, under your user)."
    )
    parser.add_argument("--hub_token", type=str, default=None, help="Prefer `hf auth login`.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line over YAML over defaults, then `check_args`."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        with open(known.config) as f:
            settings = yaml.safe_load(f) or {}
        if not isinstance(settings, dict):
            raise ValueError(f"--config {known.config}: expected a mapping of option names to values")
        options = {action.dest for action in parser._actions}
        unknown = sorted(set(settings) - options)
        if unknown:
            raise ValueError(f"--config {known.config}: unknown settings {unknown}")
        parser.set_defaults(**settings)
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Fails before anything is loaded, naming the option and its allowed values."""
    for name in ("pretrained_teacher_model", "dataset_name"):
        if not getattr(args, name):
            raise ValueError(f"--{name} is required (as a flag or in --config)")
    if args.omega_min > args.omega_max:
        raise ValueError(f"--omega_min ({args.omega_min}) must be <= --omega_max ({args.omega_max})")
    if args.num_timesteps < 2:
        raise ValueError(f"--num_timesteps must be >= 2, got {args.num_timesteps}")
    if args.max_heun_steps is not None and not 1 <= args.max_heun_steps <= args.num_timesteps - 1:
        raise ValueError(f"--max_heun_steps must be in [1, {args.num_timesteps - 1}], got {args.max_heun_steps}")
    checks = {
        "p_uncond": 0.0 <= args.p_uncond <= 1.0,
        "ema_decay": 0.0 <= args.ema_decay < 1.0,
        "export_ema_decay": 0.0 <= args.export_ema_decay < 1.0,
        "dsm_weight_scale": args.dsm_weight_scale >= 0.0,
        "max_dsm_weight": args.max_dsm_weight >= 0.0,
        "dsm_xi_max": 0.0 <= args.dsm_xi_max <= 1.0,
        "dsm_p_std": args.dsm_p_std > 0.0,
        "learning_rate": args.learning_rate > 0.0,
        "max_grad_norm": args.max_grad_norm > 0.0,
        "peak_normalize": args.peak_normalize is None or 0.0 < args.peak_normalize <= 1.0,
    }
    allowed = {
        "p_uncond": "[0, 1]",
        "ema_decay": "[0, 1)",
        "export_ema_decay": "[0, 1)",
        "dsm_weight_scale": ">= 0",
        "max_dsm_weight": ">= 0",
        "dsm_xi_max": "[0, 1]",
        "dsm_p_std": "> 0",
        "learning_rate": "> 0",
        "max_grad_norm": "> 0",
        "peak_normalize": "(0, 1]",
    }
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"--{name} must be in {allowed[name]}, got {getattr(args, name)}")
    for name in (
        "train_batch_size",
        "max_train_steps",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
        "shuffle_buffer_size",
        "latent_stats_samples",
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_teacher_trajectories < 0:
        raise ValueError(f"--num_teacher_trajectories must be >= 0 (0 = solve online), got {args.num_teacher_trajectories}")
    if not 0.0 <= args.long_jump_fraction <= 1.0:
        raise ValueError(f"--long_jump_fraction must be in [0, 1], got {args.long_jump_fraction}")
    if args.long_jump_fraction and not args.num_teacher_trajectories:
        raise ValueError("--long_jump_fraction needs --num_teacher_trajectories > 0 (the online solve shares one k per batch)")
    if args.dataloader_prefetch < 0:
        raise ValueError(f"--dataloader_prefetch must be >= 0, got {args.dataloader_prefetch}")
    if args.mix_augment < 0:
        raise ValueError(f"--mix_augment must be >= 0, got {args.mix_augment}")
    if args.max_train_minutes is not None and not args.max_train_minutes > 0:
        raise ValueError(f"--max_train_minutes must be > 0 (or unset), got {args.max_train_minutes}")
    if args.teacher_batch_size is not None and args.teacher_batch_size < 1:
        raise ValueError(f"--teacher_batch_size must be >= 1, got {args.teacher_batch_size}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}")
    if args.sample_size is not None and args.audio_length_in_s is not None:
        raise ValueError("give at most one of --sample_size and --audio_length_in_s")
    if args.sample_size is not None and args.sample_size < 1:
        raise ValueError(f"--sample_size must be >= 1, got {args.sample_size}")
    if any(steps < 1 for steps in args.validation_inference_steps):
        raise ValueError(f"--validation_inference_steps must be >= 1, got {args.validation_inference_steps}")
    if args.report_to not in ("tensorboard", "wandb", "all", "none"):
        raise ValueError(f"--report_to must be one of tensorboard, wandb, all, none; got {args.report_to!r}")


def training_length(args, transformer_config, vae) -> int:
    """Latent frames per training clip, checked against what the VAE produces."""
    hop, rate = vae.hop_length, vae.config.sampling_rate
    if args.audio_length_in_s is not None:
        samples = args.audio_length_in_s * rate
        if samples < hop or abs(samples / hop - round(samples / hop)) > 1e-6:
            raise ValueError(
                f"--audio_length_in_s {args.audio_length_in_s} is {samples:g} samples at {rate} Hz: the VAE (hop "
                f"{hop}) can only produce whole multiples of {hop} samples ({hop / rate:.6f} s)"
            )
        return int(round(samples / hop))
    size = transformer_config.sample_size  # a DiT's frames, or a UNet's (frames, bins): frames are the time axis
    return int(args.sample_size or (size[0] if isinstance(size, (list, tuple)) else size))


def latent_bins(transformer_config) -> list[int]:
    """The latent's axes after channels and frames: a UNet's mel bins (its `sample_size` is (frames, bins)), none for
    a DiT."""
    size = transformer_config.sample_size
    return [int(n) for n in size[1:]] if isinstance(size, (list, tuple)) else []


@torch.no_grad()
def check_vae_length(vae, sample_size: int, transformer_config, device) -> None:
    """The VAE must turn sample_size·hop samples into exactly the latent the transformer takes: (in_channels,
    sample_size) for a DiT, (in_channels, sample_size, bins) for a UNet."""
    channels = getattr(vae.config, "audio_channels", 1)
    audio = torch.zeros(1, channels, sample_size * vae.hop_length, device=device, dtype=vae.dtype)
    latent = vae.encode(audio).latent_dist.mean
    expected = (transformer_config.in_channels, sample_size, *latent_bins(transformer_config))
    if tuple(latent.shape[1:]) != expected:
        raise ValueError(
            f"the model length of {sample_size} latent frames ({sample_size * vae.hop_length} samples) cannot be "
            f"produced by the VAE: it encodes them to {tuple(latent.shape[1:])} (channels, frames, ...), the "
            f"transformer needs {expected}; choose another --sample_size / --audio_length_in_s"
        )


# ================================================================================================ pieces of a step
class PhaseTimer:
    """Wall-clock seconds per named phase of a step (synchronising CUDA so that times are the phase's own)."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device, self.enabled = device, enabled
        self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] += time.perf_counter() - start

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def pop(self) -> dict:
        seconds, self.seconds = dict(self.seconds), defaultdict(float)
        return seconds


class LayerInput:
    """Keeps the input of a module's last forward call (the student's last layer, for λ_DSM)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.value = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.value = inputs[0]


@dataclass
class CTMBatch:
    """Everything lines 2-10 of Algorithm 2 produce for one micro-batch (no gradient anywhere)."""

    z0: torch.Tensor  # (B, C, T) or (B, C, T, F) standardised latents
    cond: torch.Tensor  # (B, tokens, D) caption embeddings, "" where dropped
    cond_mask: torch.Tensor | None  # (B, tokens) attention mask of per-token embeddings, None for one pooled token
    omega: torch.Tensor  # (B,)
    t: torch.Tensor  # (B,) σ of z_t
    s: torch.Tensor  # (B,) jump target
    z_t: torch.Tensor
    z_target: torch.Tensor  # G_sg(θ)(Solver(z_t, t, u), u, s)
    dsm_sigma: torch.Tensor  # (B,)
    z_dsm: torch.Tensor  # z_0 + σ·ε'
    k: int
    # the DSM half's conditioning when it is not the CTM half's (teacher trajectories: the CTM half is the
    # trajectories' captions and ω, the DSM half the training clips')
    dsm_cond: torch.Tensor | None = None
    dsm_cond_mask: torch.Tensor | None = None
    dsm_omega: torch.Tensor | None = None


@torch.no_grad()
def ctm_batch(
    audio: torch.Tensor,
    captions: list[str],
    *,
    accelerator: Accelerator,
    target: SoundCTMDiTModel,
    teacher: DistillationTeacher,
    pipe: SoundCTMPipeline,
    scheduler: CTMScheduler,
    sigmas: torch.Tensor,
    uncond_embeds: tuple[torch.Tensor, torch.Tensor | None],
    args,
    shared_generator: torch.Generator,
    generator: torch.Generator,
    timer: PhaseTimer,
    latent_cache: PosteriorCache | None = None,
    text_kwargs: dict | None = None,
    trajectories: TeacherTrajectories | None = None,
) -> CTMBatch:
    """
    Lines 2-10 of Algorithm 2: latents, caption dropout, (t, u, s) and ω, the teacher's solve t → u and the target
    network's jump u → s; also the DSM noise level and its noisy latent.

    `shared_generator` draws what every process must agree on (k, so that all ranks do the same work);
    `generator` draws the rest, per process. Both live on the CPU: a run is reproducible on any device.
    `latent_cache`, if given, supplies the posteriors of clips it has seen (the same sample is drawn from them).
    `text_kwargs` go to `pipe.encode_text` (`pipe.conditioning_kwargs`: Stable Audio's seconds conditioning).
    `trajectories`, if given, supply z_t, the teacher's z_u, the caption and ω of the CTM half (distill/trajectories.py);
    the clips then serve the DSM half only.
    """
    device, batch = accelerator.device, audio.shape[0]
    vae, num_timesteps = pipe.vae, sigmas.shape[0]
    # 2-3: z_0 = E(x_0), a posterior sample, standardised as the teacher's latents were.
    with timer("vae_encode"):
        if latent_cache is None:
            posterior = vae.encode(audio.to(device, vae.dtype)).latent_dist
            post_mean, post_std = posterior.mean, posterior.std
        else:
            post_mean, post_std = (p.to(device, vae.dtype) for p in latent_cache.encode(audio))
        posterior_noise = torch.randn(post_mean.shape, generator=generator).to(device)
        z0 = vae.standardize(post_mean + post_std * posterior_noise).float()
    # 4: c_text <- ∅ with probability p_uncond.
    captions = drop_captions(captions, args.p_uncond, generator)
    with timer("text_encode"):
        cond, cond_mask = pipe.encode_text(captions, device, return_mask=True, **(text_kwargs or {}))
    uncond = uncond_embeds[0].expand(batch, -1, -1)
    uncond_mask = None if uncond_embeds[1] is None else uncond_embeds[1].expand(batch, -1)
    # 5-8: ε, (t, u, s) on the grid, ω; the DSM noise level σ with its own ε.
    k = sample_num_heun_steps(args.max_heun_steps or num_timesteps - 1, shared_generator, args.heun_step_strategy)
    n, u, s = sample_ctm_indices(batch, num_timesteps, k, generator)
    if args.long_jump_fraction:  # drawn only when asked, so that runs without it keep their random streams
        n, u, s = force_long_jumps(n, u, s, num_timesteps, args.long_jump_fraction, generator)
    n, u, s = n.to(device), u.to(device), s.to(device)
    omega = sample_omega(batch, args.omega_min, args.omega_max, generator).to(device)
    eps = torch.randn(z0.shape, generator=generator).to(device)
    config = scheduler.config
    dsm_sigma = sample_dsm_sigmas(
        batch, generator, config.sigma_min, config.sigma_max, config.rho, args.dsm_p_mean, args.dsm_p_std, args.dsm_xi_max
    ).to(device)
    dsm_eps = torch.randn(z0.shape, generator=generator).to(device)
    t_sigma, u_sigma, s_sigma = sigmas[n], sigmas[u], sigmas[s]
    dsm_conditioning = {}
    if trajectories is None:
        z_t = z0 + append_dims(t_sigma, z0.ndim) * eps
        # 9: z_u = Solver(z_t, c, ω, t, u; φ), k Heun steps of the guided teacher.
        with timer("teacher_solve"), accelerator.autocast():
            z_u = heun_solve_cfg(teacher, z_t, sigmas, n, k, cond, uncond, omega, cond_mask, uncond_mask)
    else:
        # z_t on a solved trajectory, and the solve t -> u looked up on it; its caption and ω condition the CTM half.
        with timer("teacher_solve"):
            index = torch.randint(len(trajectories), (batch,), generator=generator)
            z_t, z_u = (z.to(device) for z in trajectories.lookup(index, n, u))
            dsm_conditioning = {"dsm_cond": cond, "dsm_cond_mask": cond_mask, "dsm_omega": omega}
            omega = trajectories.omega[index].to(device)
        with timer("text_encode"):
            cond, cond_mask = pipe.encode_text(
                [trajectories.captions[j] for j in index.tolist()], device, return_mask=True, **(text_kwargs or {})
            )
    # 10: z_target = G_sg(θ)(z_u, c, ω, u, s).
    with timer("target_jump"), accelerator.autocast():
        F_target = student_output(target, scheduler, z_u, u_sigma, s_sigma, omega, cond, cond_mask)
        z_target, _ = ctm_jump(scheduler, F_target, z_u, u_sigma, s_sigma)
    return CTMBatch(
        z0=z0,
        cond=cond,
        cond_mask=cond_mask,
        omega=omega,
        t=t_sigma,
        s=s_sigma,
        z_t=z_t,
        z_target=z_target,
        dsm_sigma=dsm_sigma,
        z_dsm=z0 + append_dims(dsm_sigma, z0.ndim) * dsm_eps,
        k=k,
        **dsm_conditioning,
    )


def student_backward(
    batch: CTMBatch,
    *,
    accelerator: Accelerator,
    student,
    last_layer_input: LayerInput,
    teacher: DistillationTeacher,
    scheduler: CTMScheduler,
    args,
    timer: PhaseTimer,
) -> dict:
    """
    Lines 11-12 of Algorithm 2: the student's jump z_est = G_θ(z_t, t, s) and, in the same forward, its DSM
    prediction g_θ(z_σ, σ, σ); L = L_CTM + λ_DSM·L_DSM (Eq. 9) back-propagated with `accelerator.backward`.

    The backward starts from ∂L/∂F (F = the student's raw output): the teacher's feature graph is traversed once, for
    ∂L_CTM/∂F, and λ_DSM's last-layer gradients are formed from ∂L/∂F and that layer's input, so the gradients equal
    those of L_CTM + λ_DSM·L_DSM (λ_DSM held constant) without the two extra backward passes of the authors' code.
    Returns the logged values.
    """
    if batch.dsm_cond is None:  # both halves have the batch's captions and ω
        embeds = torch.cat([batch.cond, batch.cond])
        mask = None if batch.cond_mask is None else torch.cat([batch.cond_mask, batch.cond_mask])
        omega = torch.cat([batch.omega, batch.omega])
    else:
        embeds, mask = concat_conditioning((batch.cond, batch.cond_mask), (batch.dsm_cond, batch.dsm_cond_mask))
        omega = torch.cat([batch.omega, batch.dsm_omega])
    with timer("student_forward"), accelerator.autocast():
        F = student_output(
            student,
            scheduler,
            torch.cat([batch.z_t, batch.z_dsm]),
            torch.cat([batch.t, batch.dsm_sigma]),
            torch.cat([batch.s, batch.dsm_sigma]),
            omega,
            embeds,
            mask,
        )
    last_input = last_layer_input.value
    F_ctm, F_dsm = F.chunk(2)
    z_est, _ = ctm_jump(scheduler, F_ctm, batch.z_t, batch.t, batch.s)
    _, g_dsm = ctm_jump(scheduler, F_dsm, batch.z_dsm, batch.dsm_sigma, batch.dsm_sigma)

    with timer("dsm"):
        loss_dsm = dsm_loss(g_dsm, batch.z0, batch.dsm_sigma, teacher.sigma_data).mean()
        grad_dsm = torch.autograd.grad(loss_dsm, F, retain_graph=True)[0]
    # fp16: the gradient through the teacher is taken at the loss scale, so that it does not underflow.
    loss_scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0
    with timer("d_teacher"):
        if args.ctm_distance == "d_teacher":
            # Eqs. (5), (7): the teacher's block features at time s, with the (possibly dropped) caption.
            with accelerator.autocast():
                with torch.no_grad():
                    features_target = teacher.block_features(batch.z_target, batch.s, batch.cond, batch.cond_mask)
                features_est = teacher.block_features(z_est, batch.s, batch.cond, batch.cond_mask)
            loss_ctm = d_teacher(features_est, features_target).mean()
        else:
            loss_ctm = l2_distance(z_est, batch.z_target).mean()
        grad_ctm = torch.autograd.grad(loss_ctm * loss_scale, F)[0].float() / loss_scale
    with timer("dsm"):
        lambda_dsm = adaptive_dsm_weight(
            last_layer_weight_grad(last_layer_input.module, grad_ctm, last_input),
            last_layer_weight_grad(last_layer_input.module, grad_dsm, last_input),
            args.max_dsm_weight,
        )
        weight = args.dsm_weight_scale * lambda_dsm
    loss = loss_ctm.detach() + weight * loss_dsm.detach()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss: L_CTM={loss_ctm.item()}, L_DSM={loss_dsm.item()} (k={batch.k})")
    with timer("student_backward"):
        accelerator.backward((F * (grad_ctm + weight * grad_dsm).detach()).sum())
    return {
        "loss": loss.item(),
        "loss_ctm": loss_ctm.item(),
        "loss_dsm": loss_dsm.item(),
        "lambda_dsm": lambda_dsm.item(),
        "heun_steps": batch.k,
    }


# ================================================================================================ EMA networks
@torch.no_grad()
def update_target(target: SoundCTMDiTModel, student_params: list[torch.Tensor], mu: float) -> None:
    """sg(θ) ← μ·sg(θ) + (1 − μ)·θ."""
    target_params = list(target.parameters())
    if len(target_params) != len(student_params) or any(p.shape != q.shape for p, q in zip(student_params, target_params)):
        raise RuntimeError(
            "the student's parameters do not match the target network's; with FSDP set fsdp_use_orig_params: true"
        )
    torch._foreach_lerp_(target_params, [p.detach().to(q.dtype) for p, q in zip(student_params, target_params)], 1.0 - mu)


@contextmanager
def full_student_parameters(accelerator: Accelerator, model):
    """The student's full (unsharded) parameters in `parameters()` order, whatever wraps the model. Gathered copies
    keep `requires_grad`, which `EMAModel.step` reads (it copies, rather than averages, frozen parameters)."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type != DistributedType.FSDP:
        yield list(unwrapped.parameters())
        return
    params = list(unwrapped.parameters())
    if any(type(p).__name__ == "DTensor" for p in params):  # FSDP2
        yield [p.full_tensor().detach().requires_grad_(p.requires_grad) for p in params]
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(model, writeback=False):
        yield [p.detach().requires_grad_(p.requires_grad) for p in accelerator.unwrap_model(model).parameters()]


# ================================================================================================ checkpoints
def list_checkpoints(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    found = [d for d in os.listdir(output_dir) if CHECKPOINT_PATTERN.match(d)]
    return sorted(found, key=lambda d: int(CHECKPOINT_PATTERN.match(d).group(1)))


def resolve_checkpoint(args) -> str | None:
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = list_checkpoints(args.output_dir)
        return os.path.join(args.output_dir, found[-1]) if found else None
    path = args.resume_from_checkpoint
    if not os.path.isdir(path):
        path = os.path.join(args.output_dir, path)
    if not os.path.isdir(path):
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r}: no such checkpoint folder")
    return path


def save_checkpoint(accelerator, args, global_step: int, train_state: dict) -> str:
    """accelerate's state (student, optimizer, LR schedule; the hooks add the EMA networks) plus every process's own
    stream position and generators, written to a `.partial` folder and renamed once complete."""
    final = os.path.join(args.output_dir, f"checkpoint-{global_step}")
    partial = final + ".partial"
    if accelerator.is_main_process:
        existing = list_checkpoints(args.output_dir)
        if args.checkpoints_total_limit is not None and len(existing) >= args.checkpoints_total_limit:
            for name in existing[: len(existing) - args.checkpoints_total_limit + 1]:
                logger.info(f"removing old checkpoint {name}")
                shutil.rmtree(os.path.join(args.output_dir, name))
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    torch.save(train_state, os.path.join(partial, f"distill_state_{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        logger.info(f"saved state to {final}")
    accelerator.wait_for_everyone()
    return final


def load_train_state(path: str, accelerator: Accelerator) -> dict:
    state_path = os.path.join(path, f"distill_state_{accelerator.process_index}.pt")
    if not os.path.isfile(state_path):
        raise ValueError(f"{path} has no {os.path.basename(state_path)}: was it saved by this script?")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state["num_processes"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was saved by {state['num_processes']} processes; resume it with the same number "
            f"(now {accelerator.num_processes}), since every process resumes its own part of the stream"
        )
    return state


# ================================================================================================ validation
def student_pipeline(pipe: SoundCTMPipeline, transformer: SoundCTMDiTModel, scheduler: CTMScheduler) -> SoundCTMPipeline:
    """The teacher pipeline's class, VAE and text conditioning with a student transformer and the CTM scheduler; the
    teacher's own ω is the student's default (the teacher's step count is not)."""
    _, settings = type(pipe)._get_signature_keys(pipe)
    config = {k: pipe.config[k] for k in settings if k in pipe.config and k not in ("text_encoder_package", "num_inference_steps")}
    student_pipe = type(pipe)(
        **{**pipe.components, "transformer": transformer, "scheduler": CTMScheduler.from_config(scheduler.config)},
        **{**config, "guidance_scale": pipe.default_guidance_scale},
    )
    student_pipe.set_progress_bar_config(disable=True)
    return student_pipe


@torch.no_grad()
def log_validation(accelerator, args, pipe, transformer, scheduler, step: int) -> None:
    """1-step and N-step samples of the validation prompts (the same noise per prompt) to the trackers."""
    student_pipe = student_pipeline(pipe, transformer, scheduler)
    rate = pipe.vae.config.sampling_rate
    for steps in args.validation_inference_steps:
        for i, prompt in enumerate(args.validation_prompts):
            with accelerator.autocast():
                audio = student_pipe(
                    prompt,
                    num_inference_steps=steps,
                    guidance_scale=args.validation_guidance_scale,
                    nu=args.validation_nu,
                    generator=torch.Generator().manual_seed(args.seed + i),
                    output_type="pt",
                ).audios[0, 0]
            audio = audio.float().cpu()
            for tracker in accelerator.trackers:
                tag = f"validation/{steps}_step/{i}"
                if tracker.name == "tensorboard":
                    tracker.writer.add_audio(tag, audio[None], step, sample_rate=rate)
                elif tracker.name == "wandb":
                    import wandb

                    tracker.log({tag: wandb.Audio(audio.numpy(), sample_rate=rate, caption=prompt)}, step=step)


def exported_student(target: SoundCTMDiTModel, export_ema: EMAModel | None) -> SoundCTMDiTModel:
    """The EMA student that validation samples and the run exports: the export EMA when kept (--use_ema), else the
    target network sg(θ)."""
    if export_ema is None:
        return target
    model = copy.deepcopy(target)
    export_ema.copy_to(model.parameters())
    return model


# ================================================================================================ data
def open_stream(
    args, accelerator: Accelerator, sampling_rate: int, num_samples: int, seed: int, channels: int = 1
) -> AudioCaptionStream:
    """This process's part of the dataset as a stream of clips of `num_samples` at `sampling_rate`, mono or (for a
    stereo VAE, `channels=2`) stereo."""
    dataset, base_dir = open_dataset_of_args(args, accelerator.process_index, accelerator.num_processes)
    return AudioCaptionStream(
        dataset,
        args.audio_column,
        args.caption_column,
        sampling_rate,
        num_samples,
        seed=seed,
        rank=accelerator.process_index,
        shuffle_buffer_size=args.shuffle_buffer_size,
        base_dir=base_dir,
        random_crop=args.random_crop,
        peak_normalize=args.peak_normalize,
        channels=channels,
    )


# ================================================================================================ latent statistics
@torch.no_grad()
def compute_latent_stats(accelerator, args, pipe, num_samples) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the VAE's posterior means over `latent_stats_samples` records (the
    first ones of a fresh pass; every process reads its own part), for `standardize`."""
    vae, device = pipe.vae, accelerator.device
    channels = getattr(vae.config, "audio_channels", 1)
    stream = open_stream(args, accelerator, vae.config.sampling_rate, num_samples, seed=args.seed + 1, channels=channels)
    per_process = math.ceil(args.latent_stats_samples / accelerator.num_processes)
    sums = torch.zeros(3, vae.config.latent_dim, dtype=torch.float64, device=device)
    done = 0
    while done < per_process:
        audio, _ = stream.next_batch(min(args.train_batch_size, per_process - done))
        z = vae.encode(audio.to(device, vae.dtype)).latent_dist.mean.double()
        dims = (0, *range(2, z.ndim))  # every axis but the channels: (B, C, T) or a mel VAE's (B, C, T, F)
        sums += torch.stack([torch.full_like(z[0, :].flatten(1)[:, 0], z.numel() // z.shape[1]), z.sum(dims), (z * z).sum(dims)])
        done += audio.shape[0]
    count, total, total_sq = accelerator.reduce(sums, reduction="sum")
    mean = total / count
    std = (total_sq / count - mean**2).clamp(min=1e-24).sqrt()
    if bool((std < 1e-3 * std.max()).any()):
        logger.warning(f"some latent channels barely vary (std {std.tolist()}): standardising will amplify them")
    return mean.tolist(), std.tolist()


# ================================================================================================ model card, Hub
def is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/", "~"))


def teacher_license(teacher: str) -> str | None:
    """The license in the teacher's model card (its folder's README.md, or the Hub repo's card), which a student made
    from its weights inherits; None when the card cannot be read."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(os.path.join(teacher, "README.md") if os.path.isdir(teacher) else teacher)
    except Exception:  # no card, no network: the caller says so
        return None
    return card.data.to_dict().get("license")


def student_card_facts(args, total_batch_size: int | None = None):
    """`hub.model_card.CardFacts` of the distilled student: the teacher as base model (and its license), the dataset,
    the run's settings in words."""
    from hub.model_card import CardFacts

    license = teacher_license(args.pretrained_teacher_model)
    if license is None:
        logger.warning(
            f"could not read the license of {args.pretrained_teacher_model}'s model card: the student's card says 'other'; "
            "set the student's license (it derives from the teacher's weights) with `python -m hub.model_card --license`"
        )
    teacher_name = args.pretrained_teacher_model if is_hub_id(args.pretrained_teacher_model) else Path(args.pretrained_teacher_model).name
    batch = f", batch {total_batch_size}" if total_batch_size else ""
    return CardFacts(
        title=f"SoundCTM student of {teacher_name}",
        license=license or "other",
        base_model=args.pretrained_teacher_model if is_hub_id(args.pretrained_teacher_model) else None,
        datasets=[args.dataset_name] if is_hub_id(args.dataset_name) else [],
        training_data=(
            f"distilled from {teacher_name} on {args.dataset_name if is_hub_id(args.dataset_name) else 'a local dataset'} with "
            f"distill/train.py: {args.max_train_steps} steps{batch}, ω ~ U[{args.omega_min:g}, {args.omega_max:g}], "
            f"{args.num_timesteps}-point grid, {args.ctm_distance} distance"
            + (f", the teacher's solve looked up in {args.num_teacher_trajectories} solved trajectories" if args.num_teacher_trajectories else "")
            + (f", export EMA {args.export_ema_decay:g}" if args.use_ema else "")
        ),
        origin=f"Distilled with this project's distill/train.py from {teacher_name}.",
        repo_id=args.hub_model_id,
    )


def push_student(args, upload_fn=None) -> str:
    """Uploads the exported student as `hub.publish` does: weights, configs, the package's code files and the model
    card (the run's `checkpoint-*` states and logs stay local). The repo is `--hub_model_id`, or the output folder's
    name under the logged-in user. Returns the commit URL."""
    import tempfile

    from hub.model_card import CardFacts
    from hub.publish import export_repo, upload

    repo_id = args.hub_model_id
    if not repo_id or "/" not in repo_id:
        from huggingface_hub import HfApi

        repo_id = f"{HfApi(token=args.hub_token).whoami()['name']}/{repo_id or Path(args.output_dir).name}"
    facts = CardFacts.from_card(os.path.join(args.output_dir, "README.md")).updated(repo_id=repo_id)
    with tempfile.TemporaryDirectory(prefix="soundctm-push-") as scratch:
        export_dir = export_repo(args.output_dir, Path(scratch) / "repo", facts)
        url = (upload_fn or upload)(export_dir, repo_id, token=args.hub_token, commit_message="SoundCTM student (distill/train.py)")
    return url


# ================================================================================================ main
def main(args: argparse.Namespace) -> str:
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            raise ValueError(
                "DeepSpeed ZeRO stage 3 is not supported: the EMA target network needs the student's full weights "
                "after every step; use ZeRO stage 1/2 or FSDP"
            )
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    device = accelerator.device

    # 1. The teacher pipeline: teacher transformer φ, VAE E/D, text encoder (all frozen).
    with accelerator.main_process_first():
        pipe = load_teacher_pipeline(args.pretrained_teacher_model, args.revision, args.cache_dir)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():  # VAE, text encoder (and Stable Audio's projection model), transformer
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval().to(device)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    if weight_dtype != torch.float32:
        pipe.transformer.to(dtype=weight_dtype)
    scheduler = teacher_ctm_scheduler(pipe.scheduler.config)
    teacher = make_teacher(pipe.transformer, scheduler, max_batch_size=args.teacher_batch_size)
    if abs(pipe.vae.config.scaling_factor - scheduler.config.sigma_data) > 1e-6:
        logger.warning(
            f"the VAE's scaling_factor ({pipe.vae.config.scaling_factor}) differs from the teacher's sigma_data "
            f"({scheduler.config.sigma_data}): the latents will not have the spread the teacher was trained on"
        )

    # 2. The model length, checked against the VAE.
    sample_size = training_length(args, pipe.transformer.config, pipe.vae)
    check_vae_length(pipe.vae, sample_size, pipe.transformer.config, device)
    num_samples = sample_size * pipe.vae.hop_length
    channels = getattr(pipe.vae.config, "audio_channels", 1)
    # what the prompt conditioning depends on besides the text: Stable Audio's seconds (0 to the clip's length)
    text_kwargs = pipe.conditioning_kwargs(num_samples / pipe.vae.config.sampling_rate)

    # 3. The student θ (the teacher plus s and ω inputs, from the teacher's weights) and its EMA target sg(θ).
    student = make_student(pipe.transformer, sample_size, seed=args.seed).to(device).train()
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()
        pipe.transformer.enable_gradient_checkpointing()
    target = copy.deepcopy(student).requires_grad_(False).eval()
    export_ema = None
    if args.use_ema:
        export_ema = EMAModel(
            student.parameters(), decay=args.export_ema_decay, model_cls=type(student), model_config=student.config
        )
        export_ema.to(device)
    last_layer_input = LayerInput(student_last_layer(student))  # θ_L of λ_DSM: the layer that outputs F

    # 4. Data: this process's part of the stream.
    stream = open_stream(args, accelerator, pipe.vae.config.sampling_rate, num_samples, seed=args.seed, channels=channels)
    stream.check()  # an empty stream, missing columns or undecodable audio fail here, before any training

    checkpoint = resolve_checkpoint(args)
    if args.resume_from_checkpoint and checkpoint is None:
        logger.info(f"no checkpoint in {args.output_dir}: starting a new run")
    if args.compute_latent_stats:
        stats_path = os.path.join(args.output_dir, "latent_stats.json")
        if checkpoint is not None and os.path.isfile(stats_path):  # a resumed run keeps the statistics it began with
            with open(stats_path) as f:
                stats = json.load(f)
            mean, std = stats["latents_mean"], stats["latents_std"]
        else:
            mean, std = compute_latent_stats(accelerator, args, pipe, num_samples)
            if accelerator.is_main_process:
                with open(stats_path, "w") as f:
                    json.dump({"latents_mean": mean, "latents_std": std}, f, indent=2)
        pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
        logger.info(f"latent statistics: mean {np.round(mean, 4).tolist()}, std {np.round(std, 4).tolist()}")

    # 5. Optimiser (RAdam, Appendix D) and schedule; accelerate wraps the student for DDP / FSDP / DeepSpeed.
    optimizer = torch.optim.RAdam(
        student.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.adam_weight_decay,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    student, optimizer, lr_scheduler = accelerator.prepare(student, optimizer, lr_scheduler)

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            target.save_pretrained(os.path.join(output_dir, "transformer_target"))
            if export_ema is not None:
                export_ema.save_pretrained(os.path.join(output_dir, "transformer_ema"))

    def load_model_hook(models, input_dir):
        loaded = type(target).from_pretrained(os.path.join(input_dir, "transformer_target"))
        target.load_state_dict(loaded.state_dict())
        if export_ema is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, "transformer_ema"), type(target))
            export_ema.load_state_dict(loaded.state_dict())
            export_ema.to(device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    sigmas = torch.from_numpy(scheduler.karras_sigmas(args.num_timesteps)).float().to(device)
    uncond_embeds = pipe.encode_text([""], device, return_mask=True, **text_kwargs)
    shared_generator = torch.Generator().manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1000 * (1 + accelerator.process_index))

    if accelerator.is_main_process:
        config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
        accelerator.init_trackers(args.tracker_project_name, config=config)

    global_step = 0
    if checkpoint is not None:
        logger.info(f"resuming from {checkpoint}")
        accelerator.load_state(checkpoint)
        state = load_train_state(checkpoint, accelerator)
        global_step = state["global_step"]
        stream.load_state_dict(state["stream"])
        shared_generator.set_state(state["shared_generator"])
        generator.set_state(state["generator"])

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Distillation *****")
    logger.info(f"  teacher = {args.pretrained_teacher_model}, data = {args.dataset_name}")
    logger.info(f"  batch per process = {args.train_batch_size}, total batch = {total_batch}")
    logger.info(f"  steps = {args.max_train_steps} (from {global_step}), grid N = {args.num_timesteps}")

    trajectories = None
    if args.num_teacher_trajectories:
        trajectories = load_or_solve(
            args,
            pipe,
            teacher,
            sigmas,
            (pipe.transformer.config.in_channels, sample_size, *latent_bins(pipe.transformer.config)),
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            uncond_embeds=uncond_embeds,
            text_kwargs=text_kwargs,
            autocast=accelerator.autocast,
        )
    latent_cache = None
    if args.cache_latents or args.latent_cache_dir:
        latent_cache = PosteriorCache(pipe.vae, args.latent_cache_dir, batch_size=args.train_batch_size)
    batches = BatchPrefetcher(stream, args.train_batch_size, args.dataloader_prefetch)
    timer = PhaseTimer(device)
    loop_start = time.perf_counter()
    while global_step < args.max_train_steps:
        if args.max_train_minutes is not None:
            # every process stops at the same step: the slowest one's clock decides
            elapsed = torch.tensor((time.perf_counter() - loop_start) / 60, device=device)
            if accelerator.reduce(elapsed, reduction="max").item() >= args.max_train_minutes:
                logger.info(f"stopping at step {global_step}: --max_train_minutes {args.max_train_minutes} reached")
                break
        step_start = time.perf_counter()
        step_logs = defaultdict(float)
        for _ in range(args.gradient_accumulation_steps):
            with accelerator.accumulate(student):
                with timer("data"):
                    audio, captions = batches.next_batch()
                    if args.mix_augment:
                        audio, captions = mix_augment(
                            audio, captions, args.mix_augment, pipe.vae.config.sampling_rate, generator, args.peak_normalize
                        )
                batch = ctm_batch(
                    audio,
                    captions,
                    accelerator=accelerator,
                    target=target,
                    teacher=teacher,
                    pipe=pipe,
                    scheduler=scheduler,
                    sigmas=sigmas,
                    uncond_embeds=uncond_embeds,
                    args=args,
                    shared_generator=shared_generator,
                    generator=generator,
                    timer=timer,
                    latent_cache=latent_cache,
                    text_kwargs=text_kwargs,
                    trajectories=trajectories,
                )
                logs = student_backward(
                    batch,
                    accelerator=accelerator,
                    student=student,
                    last_layer_input=last_layer_input,
                    teacher=teacher,
                    scheduler=scheduler,
                    args=args,
                    timer=timer,
                )
                for key, value in logs.items():
                    step_logs[key] += value / args.gradient_accumulation_steps
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
                    step_logs["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            raise RuntimeError("gradient accumulation and the step loop disagree")  # accumulate() syncs the last one

        # After the optimiser step: the EMA target network sg(θ) (and the export EMA).
        with full_student_parameters(accelerator, student) as params:
            update_target(target, params, args.ema_decay)
            if export_ema is not None:
                export_ema.step(params)
        global_step += 1

        seconds = time.perf_counter() - step_start
        data_state = batches.state_dict()
        values = torch.tensor(
            [step_logs[k] for k in ("loss", "loss_ctm", "loss_dsm", "lambda_dsm")]
            + [float(data_state["skipped"]), float(data_state.get("upmixed", 0))],
            device=device,
            dtype=torch.float64,
        )
        values = accelerator.reduce(values, reduction="sum")
        world = accelerator.num_processes
        logs = {
            "train/loss": values[0].item() / world,
            "train/loss_ctm": values[1].item() / world,
            "train/loss_dsm": values[2].item() / world,
            "train/lambda_dsm": values[3].item() / world,
            "train/grad_norm": step_logs["grad_norm"],
            "train/heun_steps": step_logs["heun_steps"],
            "train/lr": lr_scheduler.get_last_lr()[0],
            "data/skipped_records": values[4].item(),
            "data/mono_upmixed": values[5].item(),
            "data/epoch": data_state["epoch"],
            "speed/samples_per_second": total_batch / seconds,
            "speed/seconds_per_step": seconds,
        }
        logs.update({f"speed/{name}_s": value for name, value in timer.pop().items()})
        if latent_cache is not None:  # this process's clips served from the cache / encoded, over the run
            logs.update({"data/latent_cache_hits": latent_cache.hits, "data/latent_cache_misses": latent_cache.misses})
        accelerator.log(logs, step=global_step)
        if accelerator.is_main_process:
            logger.info(
                f"step {global_step}: loss {logs['train/loss']:.4f} (ctm {logs['train/loss_ctm']:.4f}, dsm "
                f"{logs['train/loss_dsm']:.4f}, λ {logs['train/lambda_dsm']:.3g}), k {int(logs['train/heun_steps'])}, "
                f"{seconds:.2f} s"
            )

        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            train_state = {
                "global_step": global_step,
                "num_processes": accelerator.num_processes,
                "stream": data_state,
                "shared_generator": shared_generator.get_state(),
                "generator": generator.get_state(),
            }
            save_checkpoint(accelerator, args, global_step, train_state)
        if global_step % args.validation_steps == 0 and accelerator.is_main_process and args.report_to != "none":
            log_validation(accelerator, args, pipe, exported_student(target, export_ema), scheduler, global_step)

    batches.close()
    # The EMA student as a SoundCTM pipeline folder.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        exported = student_pipeline(pipe, exported_student(target, export_ema), scheduler)
        exported.save_pretrained(args.output_dir)
        from hub.model_card import write_model_card

        write_model_card(args.output_dir, student_card_facts(args, total_batch))
        logger.info(f"saved the student pipeline to {args.output_dir}, with its model card (README.md)")
        if args.push_to_hub:
            logger.info(f"pushed the student to the Hub: {push_student(args)}")
    accelerator.end_training()
    return args.output_dir


if __name__ == "__main__":
    main(parse_args())
