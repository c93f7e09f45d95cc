"""Stage 2: fit the demo's spectral codec (AutoencoderLogMel) to the procedural clips.

    python -m recipes.procedural.train_codec --data runs/procedural/data --out runs/procedural/codec

Nothing is trained by gradient descent: the codec's latent is a PCA of stacked log-mel frames (two STFT frames of
hop 1024 per latent frame, 128 mel bands each) of the training clips, and its decoder is the filterbank's
pseudo-inverse followed by fast Griffin-Lim. The fit puts the mean frame in `center`, the leading `--latent-dim`
principal directions in `projection`, and one scale for every channel in the config (`latents_std`: the latents' RMS),
so that standardised latents keep the PCA's ordering — the first channels, where a sound's envelope and spectrum
live, carry most of the power, and the trailing ones, mostly noise texture, little (per-channel whitening gave them
as much weight, and cut the class-mean share below from 0.6 to 0.2).

The report (report.json in the output folder, also printed):
- reconstruction: the analytic evaluator's prompt adherence and attributes matched for the decoded test clips, their
  Fréchet distance and log-mel content distance to the originals, the median ratio of a reconstruction's peak to
  its original's and the share of reconstructions that reach full scale;
- class-mean share, per class of the training clips (`class_mean_share`): the power of the class's mean standardised
  latent over its clips' mean power — how much of a sound the caption alone determines in this latent space;
- the decode time of one clip, warm (`--threads` threads).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from soundctm import AutoencoderLogMel

from .common import add_run_arguments, start_run
from .evaluate import accuracy, attribute_accuracy, content_distance, features, frechet_distance, full_scale_share
from .make_data import read_split

CODEC_CONFIG = dict(
    sampling_rate=44100,
    n_fft=2048,
    stft_hop_length=1024,
    frames_per_latent=2,  # a latent frame spans 2048 samples (46 ms): 88 tokens per 4.09 s clip for the DiT
    n_mels=128,
    log_floor=0.01,
    latent_dim=64,
    griffin_lim_iters=16,
    griffin_lim_momentum=0.99,
)


def as_float(audio_int16: np.ndarray) -> torch.Tensor:
    """16-bit PCM clips `(clips, samples)` → float `(clips, 1, samples)` in [-1, 1), as distill/train.py reads them."""
    return torch.from_numpy(audio_int16.astype(np.float32) / 32768.0)[:, None]


@torch.no_grad()
def fit_codec(codec: AutoencoderLogMel, audio_int16: np.ndarray, batch_size: int = 64) -> dict:
    """PCA of the stacked log-mel frames of `audio_int16` into `codec.projection` / `codec.center`, and the latents'
    RMS as every channel's `latents_std` (mean 0: the PCA is centred). Returns the explained variance."""
    frames = torch.cat([codec.stack(codec.log_mel(as_float(audio_int16[i : i + batch_size])))
                        for i in range(0, len(audio_int16), batch_size)]).flatten(0, 1).double()
    center = frames.mean(0)
    _, singular, directions = torch.linalg.svd(frames - center, full_matrices=False)
    c = codec.config.latent_dim
    codec.center.copy_(center.float())
    codec.projection.copy_(directions[:c].float())
    power = singular.pow(2)
    rms = float((power[:c].sum() / (len(frames) * c)).sqrt())
    codec.register_to_config(latents_mean=[0.0] * c, latents_std=[rms] * c)
    return {"explained_variance": round(float(power[:c].sum() / power.sum()), 5), "latents_rms": round(rms, 4)}


@torch.no_grad()
def encode_latents(codec, clips: list[np.ndarray], batch_size: int = 32) -> torch.Tensor:
    """Standardised latents of float clips `(clips, latent_dim, frames)`."""
    audio = torch.from_numpy(np.stack([np.clip(c, -1, 1) for c in clips]).astype(np.float32))[:, None]
    return torch.cat([codec.standardize(codec.encode(audio[i : i + batch_size]).latent_dist.mean)
                      for i in range(0, len(audio), batch_size)])


def latent_distance(codec, clips_a: list[np.ndarray], clips_b: list[np.ndarray]) -> list[float]:
    """Cosine distance (1 − cosine similarity) between the standardised latents of clip pairs: 0 for the same sound,
    about 1 for two unrelated ones; a feature distance in the spirit of the paper's CLAP-LPAPS."""
    a, b = encode_latents(codec, clips_a).flatten(1), encode_latents(codec, clips_b).flatten(1)
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).tolist()


@torch.no_grad()
def reconstruct(codec, audio_int16: np.ndarray, batch_size: int = 16, clamp: bool = True) -> list[np.ndarray]:
    """Decoded latents of whole clips, as mono float arrays, clamped to [-1, 1] as the pipeline's output is."""
    clips = []
    for i in range(0, len(audio_int16), batch_size):
        z = codec.encode(as_float(audio_int16[i : i + batch_size])).latent_dist.mean
        audio = codec.decode(z).sample[:, 0]
        clips.extend((audio.clamp(-1, 1) if clamp else audio).numpy())
    return clips


@torch.no_grad()
def reconstruction_report(codec, data_dir: str) -> dict:
    """Evaluator scores of the codec's reconstructions of the test clips (a ceiling for every generated row)."""
    records, audio = read_split(data_dir, "test")
    real = [a.astype(np.float32) / 32768.0 for a in audio]
    unclamped = reconstruct(codec, audio, clamp=False)
    recon = [np.clip(clip, -1.0, 1.0) for clip in unclamped]
    prompts = [r["caption"] for r in records]
    return {
        "real_accuracy": accuracy(real, prompts),
        "reconstruction_accuracy": round(accuracy(recon, prompts), 4),
        "reconstruction_attributes": round(attribute_accuracy(recon, prompts), 4),
        "reconstruction_content_distance_db": round(float(np.mean([content_distance(a, b) for a, b in zip(real, recon)])), 3),
        "reconstruction_frechet": round(frechet_distance(np.stack([features(a) for a in real]), np.stack([features(b) for b in recon])), 3),
        # Griffin-Lim's phases change the waveform's peaks, not its spectrum: how much, and how often they clip.
        "reconstruction_peak_ratio_median": round(float(np.median([np.abs(b).max() / np.abs(a).max() for a, b in zip(real, unclamped)])), 3),
        "reconstruction_full_scale": round(full_scale_share(recon), 3),
    }


def class_mean_share(latents: torch.Tensor, labels: list[str]) -> dict[str, float]:
    """Per class: ‖mean over its clips of the standardised latent‖² / mean over its clips of ‖latent‖² (1 = every clip
    of the class has the same latent, 0 = its clips average to nothing). At high noise a denoiser can only return the
    class mean, so this is how much of a sound is decided where its caption is all the model has."""
    shares = {}
    for label in sorted(set(labels)):
        members = latents[[i for i, name in enumerate(labels) if name == label]]
        shares[label] = round((members.mean(0).pow(2).mean() / members.pow(2).mean()).item(), 3)
    return shares


def decode_seconds(codec, repeats: int = 5) -> float:
    """Best-of wall time of decoding one clip's latents (warm)."""
    z = torch.randn(1, codec.config.latent_dim, 88) * torch.tensor(codec.config.latents_std)[None, :, None]
    times = []
    with torch.no_grad():
        codec.decode(z)
        for _ in range(repeats):
            start = time.perf_counter()
            codec.decode(z)
            times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder written by make_data.py")
    parser.add_argument("--out", required=True, help="output folder for the codec (save_pretrained)")
    parser.add_argument("--latent-dim", type=int, default=CODEC_CONFIG["latent_dim"])
    parser.add_argument("--griffin-lim-iters", type=int, default=CODEC_CONFIG["griffin_lim_iters"])
    add_run_arguments(parser, max_minutes=10.0)
    args = parser.parse_args(argv)
    start, _ = start_run(args)

    codec = AutoencoderLogMel(**{**CODEC_CONFIG, "latent_dim": args.latent_dim, "griffin_lim_iters": args.griffin_lim_iters})
    records, audio = read_split(args.data, "train")
    report = fit_codec(codec, audio)
    codec.save_pretrained(args.out)
    print(f"fitted on {len(records)} clips in {time.time() - start:.0f} s: {report}", flush=True)

    latents = encode_latents(codec, [a.astype(np.float32) / 32768.0 for a in audio])
    shares = class_mean_share(latents, [r["label"] for r in records])
    report["class_mean_share_mean"] = round(float(np.mean(list(shares.values()))), 3)
    report["class_mean_share_min"] = min(shares.values())
    report["class_mean_share"] = shares
    report.update(reconstruction_report(codec, args.data))
    report["decode_seconds_per_clip"] = round(decode_seconds(codec), 4)
    report["threads"] = args.threads
    report["total_minutes"] = round((time.time() - start) / 60, 2)
    with open(Path(args.out) / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "class_mean_share"}), flush=True)


if __name__ == "__main__":
    main()
