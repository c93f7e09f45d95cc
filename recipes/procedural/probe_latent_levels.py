"""Diagnostic for stage 3: where does a fade live in the demo VAE's latents, in their mean or in their variance?

    python -m recipes.procedural.probe_latent_levels --data runs/procedural/data --vae runs/procedural/vae_lin0 \\
        --latent-cache runs/procedural/latent_cache

For each envelope of the training split, prints the latents' power (standardised posterior means, averaged over
channels and clips) in each eighth of the frames, and the share of that power the class mean carries (the power of
the mean latent of each class over the mean power of its latents, averaged over the classes; 1 = every clip of a
class has the same latent, 0 = they average to nothing). With a share near 0, a denoiser's output from pure noise
is near 0 for every caption, and a fade can only come from the sampler: the network has to give the quiet frames less
of the noise it keeps, by their position. tests/test_recipe_teacher.py checks that the DiT can learn that.
"""

import argparse

import numpy as np
import torch

from soundctm import AutoencoderGaussianDAC

from .train_teacher import training_posteriors


@torch.no_grad()
def latent_levels(latents: torch.Tensor, labels: list[str], envelopes: list[str | None], parts: int = 8) -> dict:
    """Per envelope: power in each of `parts` spans of the frames, and the class-mean share (module docstring)."""
    report = {}
    for envelope in sorted({e for e in envelopes if e is not None}):
        rows = [i for i, e in enumerate(envelopes) if e == envelope]
        power = latents[rows].pow(2).mean((0, 1))
        shares = []
        for label in sorted({labels[i] for i in rows}):
            members = latents[[i for i in rows if labels[i] == label]]
            shares.append((members.mean(0).pow(2).mean() / members.pow(2).mean()).item())
        report[envelope] = {
            "clips": len(rows),
            "power_per_part": [round(part.mean().item(), 3) for part in power.tensor_split(parts)],
            "class_mean_share": round(float(np.mean(shares)), 3),
        }
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the recipe's data folder (its train split is read)")
    parser.add_argument("--vae", required=True, help="VAE folder from train_vae.py")
    parser.add_argument("--latent-cache", default=None, help="train_teacher.py's --latent-cache folder, to reuse it")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vae = AutoencoderGaussianDAC.from_pretrained(args.vae).eval()
    records, mean, _ = training_posteriors(vae, args.data, args.latent_cache)
    latents = vae.standardize(mean).float()
    report = latent_levels(latents, [r["label"] for r in records], [r.get("envelope") for r in records])
    for envelope, row in report.items():
        print(f"{envelope:9s} {row['clips']:4d} clips  power per eighth {' '.join(f'{v:.3f}' for v in row['power_per_part'])}  "
              f"class-mean share {row['class_mean_share']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
