"""Stage 2: train the demo's Gaussian-DAC VAE (AutoencoderGaussianDAC, a small config) on the procedural clips.

    python -m recipes.procedural.train_vae --data runs/procedural/data --out runs/procedural/vae

Losses: multi-resolution STFT (log-magnitude L1 + spectral convergence at 5 window sizes) + waveform L1 +
a small KL to N(0, 1), on random crops. No adversarial or feature-matching loss (the paper's DAC recipe has
both): they would double the cost of a step on this CPU. Weight norm is used while training and folded into
plain convolution weights before saving, as the authors' code does before inference.

At the end: per-channel latents_mean / latents_std of posterior samples of the training clips go into the
VAE config (so the diffusion stages standardise with them), the VAE is saved with `save_pretrained`, and its
reconstructions of the test clips are scored with the analytic evaluator (report.json).
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from soundctm import AutoencoderGaussianDAC

from .common import add_run_arguments, start_run
from .evaluate import accuracy, content_distance, features, frechet_distance
from .make_data import read_split


# Hop 2048 (88 latent frames per 4.09 s clip) keeps the DiT's sequence short; 32 latent channels.
VAE_CONFIG = dict(
    encoder_dim=8,
    encoder_rates=[4, 8, 8, 8],
    latent_dim=32,
    decoder_dim=256,
    decoder_rates=[8, 8, 8, 4],
    sampling_rate=44100,
    audio_channels=1,
)
STFT_SIZES = (2048, 1024, 512, 256, 128)


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ over window sizes of L1(log|Y| − log|X|) + ‖|Y| − |X|‖_F / ‖|X|‖_F (spectral convergence)."""
    loss = pred.new_zeros(())
    pred, target = pred.flatten(0, 1), target.flatten(0, 1)
    for n_fft in STFT_SIZES:
        window = torch.hann_window(n_fft, device=pred.device)
        mag_p, mag_t = (
            torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs() for x in (pred, target)
        )
        loss = loss + F.l1_loss(torch.log(mag_p + 1e-4), torch.log(mag_t + 1e-4))
        loss = loss + torch.linalg.norm(mag_p - mag_t) / (torch.linalg.norm(mag_t) + 1e-7)
    return loss / len(STFT_SIZES)


def convolutions(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


@torch.no_grad()
def encode_posteriors(vae, audio_int16: np.ndarray, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of whole clips, each (clips, latent_dim, frames)."""
    means, stds = [], []
    for i in range(0, len(audio_int16), batch_size):
        x = torch.from_numpy(audio_int16[i : i + batch_size].astype(np.float32) / 32768.0)[:, None]
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_report(vae, data_dir: str) -> dict:
    """Evaluator scores of the VAE's reconstructions of the test clips (a ceiling for every generated row)."""
    records, audio = read_split(data_dir, "test")
    latents = encode_posteriors(vae, audio)[0]
    real = [a.astype(np.float32) / 32768.0 for a in audio]
    recon = [vae.decode(latents[i : i + 8]).sample[:, 0].clamp(-1, 1).numpy() for i in range(0, len(latents), 8)]
    recon = [r for batch in recon for r in batch]
    prompts = [r["caption"] for r in records]
    return {
        "real_accuracy": accuracy(real, prompts),
        "reconstruction_accuracy": accuracy(recon, prompts),
        "reconstruction_content_distance_db": float(np.mean([content_distance(a, b) for a, b in zip(real, recon)])),
        "reconstruction_frechet": frechet_distance(np.stack([features(a) for a in real]), np.stack([features(b) for b in recon])),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder written by make_data.py")
    parser.add_argument("--out", required=True, help="output folder for the VAE (save_pretrained)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=16384, help="training crop in samples (a multiple of the hop)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--kl-weight", type=float, default=1e-3)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--stats-every", type=int, default=6, help="latent statistics from every n-th training clip")
    add_run_arguments(parser, max_minutes=50.0)
    args = parser.parse_args(argv)
    start, rng = start_run(args)

    _, audio = read_split(args.data, "train")
    print(f"{len(audio)} training clips loaded in {time.time() - start:.0f} s", flush=True)

    vae = AutoencoderGaussianDAC(**VAE_CONFIG)
    if args.crop % vae.hop_length:
        raise ValueError(f"--crop must be a multiple of the hop length {vae.hop_length}, got {args.crop}")
    for conv in convolutions(vae):
        weight_norm(conv)
    print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, hop {vae.hop_length}", flush=True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.8, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    )

    vae.train()
    step_time = time.time()
    for step in range(args.steps):
        clips = rng.integers(0, len(audio), args.batch_size)
        offsets = rng.integers(0, audio.shape[1] - args.crop + 1, args.batch_size)
        batch = np.stack([audio[c, o : o + args.crop] for c, o in zip(clips, offsets)]).astype(np.float32) / 32768.0
        x = torch.from_numpy(batch)[:, None]

        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        stft = multi_resolution_stft_loss(y, x)
        l1 = F.l1_loss(y, x)
        kl = 0.5 * torch.mean(posterior.mean**2 + posterior.var - 1.0 - posterior.logvar)
        loss = stft + args.l1_weight * l1 + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        optimizer.step()
        schedule.step()

        if step % 50 == 0 or step == args.steps - 1:
            rate = (time.time() - step_time) / (1 if step == 0 else 50)
            step_time = time.time()
            print(
                f"step {step:5d}  loss {loss.item():.4f}  stft {stft.item():.4f}  l1 {l1.item():.4f}  kl {kl.item():.3f}  "
                f"grad {grad_norm.item():.2f}  {rate:.2f} s/step  {(time.time() - start) / 60:.1f} min",
                flush=True,
            )
        if (time.time() - start) / 60 > args.max_minutes:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    train_minutes = (time.time() - start) / 60

    vae.eval()
    for conv in convolutions(vae):
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    # Statistics of posterior samples, which is what the teacher and the distillation train on.
    mean, std = encode_posteriors(vae, audio[:: args.stats_every])
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed))
    mean, std = z.mean(dim=(0, 2)), z.std(dim=(0, 2))
    vae.register_to_config(latents_mean=[round(v, 6) for v in mean.tolist()], latents_std=[round(v, 6) for v in std.tolist()])
    vae.save_pretrained(args.out)

    report = {"steps": step + 1, "train_minutes": round(train_minutes, 1), **VAE_CONFIG, **vars(args)}
    report.update(reconstruction_report(vae, args.data))
    report["total_minutes"] = round((time.time() - start) / 60, 1)
    with open(Path(args.out) / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: report[k] for k in ("steps", "train_minutes", "total_minutes", "real_accuracy",
                                             "reconstruction_accuracy", "reconstruction_content_distance_db",
                                             "reconstruction_frechet")}), flush=True)


if __name__ == "__main__":
    main()
