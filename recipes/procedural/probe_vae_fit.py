"""Diagnostic for stage 2: can the demo VAE's network fit the waveform at all in a few minutes of this CPU?

    python -m recipes.procedural.probe_vae_fit --data runs/procedural/data --latent-dim 256

Trains three autoencoders of the same hop and latent width for `--steps` steps on the plainest objective there is,
the waveform's mean squared error relative to the crop's power (1.0 = silence, 0 = exact), on the same training
crops, and prints the error as it goes:

    linear         one strided Conv1d (window 2·hop) and one ConvTranspose1d: a learned linear filterbank codec
    dac            AutoencoderGaussianDAC with the recipe's config and `train_vae.initialize` (LSUV)
    dac-identity   the same, its residual units starting as the identity and its Snake activations nearly linear
                   (α = 0.05), so that at the start it is a chain of strided convolutions
    dac-linear     the same network started by `train_vae.linear_start` from the data's PCA filterbank: at step 0
                   it already is the linear codec

If the linear codec fits and the DAC does not, the DAC's trouble in a short run is the optimisation of its deep
chain, not what its losses ask for (the spectral losses of train_vae.py sit on top of the same network).
"""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from soundctm import AutoencoderGaussianDAC
from soundctm.autoencoder_gaussian_dac import Snake1d

from .common import add_run_arguments, start_run
from .make_data import read_split
from .train_vae import VAE_CONFIG, initialize, linear_start, pca_filterbank, random_crops


class LinearCodec(nn.Module):
    def __init__(self, hop: int, latent_dim: int):
        super().__init__()
        self.analysis = nn.Conv1d(1, latent_dim, 2 * hop, stride=hop, padding=hop // 2)
        self.synthesis = nn.ConvTranspose1d(latent_dim, 1, 2 * hop, stride=hop, padding=hop // 2)

    def forward(self, x):
        return self.synthesis(self.analysis(x))


class DACCodec(nn.Module):
    def __init__(self, vae: AutoencoderGaussianDAC):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        return self.vae.decode(self.vae.encode(x).latent_dist.mean).sample


def build(kind: str, latent_dim: int, calibration: torch.Tensor, audio: np.ndarray) -> nn.Module:
    config = {**VAE_CONFIG, "latent_dim": latent_dim}
    if kind == "linear":
        return LinearCodec(int(np.prod(config["encoder_rates"])), latent_dim)
    vae = AutoencoderGaussianDAC(**config)
    if kind == "dac-linear":
        linear_start(vae, pca_filterbank(audio, vae.hop_length, latent_dim))
        return DACCodec(vae)
    if kind == "dac-identity":
        with torch.no_grad():
            for module in vae.modules():
                if isinstance(module, Snake1d):
                    module.alpha.fill_(0.05)
    initialize(vae, calibration, identity_residuals=kind == "dac-identity")
    return DACCodec(vae)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder written by make_data.py")
    parser.add_argument("--kinds", default="linear,dac,dac-identity,dac-linear")
    parser.add_argument("--latent-dim", type=int, default=VAE_CONFIG["latent_dim"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--clips", type=int, default=272, help="training clips loaded (every n-th of the split)")
    add_run_arguments(parser, max_minutes=30.0)
    args = parser.parse_args(argv)
    start_run(args)
    _, audio = read_split(args.data, "train")
    audio = audio[:: max(1, len(audio) // args.clips)]

    def crops(rng, n):
        return torch.from_numpy(random_crops(audio, rng, n, args.crop))[:, None]

    results = {}
    for kind in args.kinds.split(","):
        torch.manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)  # every kind sees the same crops
        model = build(kind, args.latent_dim, crops(rng, 8), audio)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        errors, tick = [], time.time()
        for step in range(args.steps):
            x = crops(rng, args.batch_size)
            loss = (model(x) - x).pow(2).mean() / x.pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            errors.append(loss.item())
            if step % 25 == 0 or step == args.steps - 1:
                print(f"{kind:13s} step {step:4d}  relative MSE {loss.item():.3f}  {time.time() - tick:.0f} s", flush=True)
        results[kind] = {
            "relative_mse_first_25": float(np.mean(errors[:25])),
            "relative_mse_last_25": float(np.mean(errors[-25:])),
            "seconds": round(time.time() - tick, 1),
        }
    print(json.dumps({"latent_dim": args.latent_dim, "hop": int(np.prod(VAE_CONFIG["encoder_rates"])),
                      "steps": args.steps, "lr": args.lr, "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
