"""Diagnostic for stage 3: where does a fade live in the demo VAE's latents, in their mean or in their variance?

    python -m recipes.procedural.probe_latent_levels --data runs/procedural/data --vae runs/procedural/vae_lin0 \\
        --latent-cache runs/procedural/latent_cache [--teacher runs/procedural/teacher]

For each envelope of the training split, prints the latents' power (standardised posterior means, averaged over
channels and clips) in each eighth of the frames, and the share of that power the class mean carries (the power of
the mean latent of each class over the mean power of its latents, averaged over the classes; 1 = every clip of a
class has the same latent, 0 = they average to nothing). With a share near 0, a denoiser's output from pure noise
is near 0 for every caption, and a fade can only come from the sampler: the network has to give the quiet frames less
of the noise it keeps, by their position. tests/test_recipe_teacher.py checks that the DiT can learn that.

With --teacher (a teacher pipeline folder; its VAE is used unless --vae is given), also the power per eighth of the teacher's denoised
output D(z_0 + σ·n, σ, caption) for the same clips at several σ (`denoiser_levels`): where a teacher keeps the fade
of its input and where it makes every frame alike. The noise levels that decide a sample's envelope are those at which
the sound first shows through the noise (σ ≈ 2-8 here); a teacher that is flat there makes steady samples.
Then the same on the teacher's own sampling path (`sampling_levels`): D along an Euler solve of the probability-flow
ODE from pure noise (no CFG), for one caption of each envelope — which is where a sample's fade has to come from.
Both again for a reference that knows nothing but each class's per-(channel, frame) mean and variance
(`ClassGaussianDenoiser`, fitted on half the clips), beside the relative denoising error of teacher and reference on
the other half, and what knowing the envelope is worth in the loss at each σ (`envelope_worth`): how strongly
training pushes a denoiser towards a fade where the fade is decided.
"""

import argparse
import math

import numpy as np
import torch

from soundctm import AutoencoderGaussianDAC, SoundCTMPipeline

from .train_teacher import rendered_latents, teacher_denoiser, training_posteriors


def power_per_part(latents: torch.Tensor, parts: int, view=None) -> list[float]:
    """Mean square of `(clips, channels, frames)` latents over clips and channels, in each of `parts` spans of the
    frames; of `view(latents)` if given (`codec_view`)."""
    latents = latents if view is None else view(latents)
    return [round(part.mean().item(), 3) for part in latents.pow(2).mean((0, 1)).tensor_split(parts)]


def codec_view(vae, reference: torch.Tensor):
    """For a VAE with a gain channel (`AutoencoderGaussianDAC(gain_channel=True)`): a map from standardised latents to
    its codec's latents (the shape channels times exp(gain), what the decoder renders), scaled so that those of
    `reference` (standardised latents of the data) have mean square scaling_factor², like standardised latents.
    Frame powers of that view are comparable to those of a VAE without one. None for a VAE without one."""
    if not vae.config.gain_channel:
        return None
    scale = vae.config.scaling_factor / rendered_latents(vae, reference).pow(2).mean().sqrt()
    return lambda z: rendered_latents(vae, z) * scale


def print_levels(report: dict, width: int) -> None:
    for envelope, row in report.items():
        for key, values in row.items():
            if key != "clips":
                print(f"{envelope:9s} {key:{width}s} {' '.join(f'{v:.3f}' for v in values)}")


@torch.no_grad()
def latent_levels(latents: torch.Tensor, labels: list[str], envelopes: list[str | None], parts: int = 8, view=None) -> dict:
    """Per envelope: power in each of `parts` spans of the frames (of `view(latents)` if given), and the class-mean
    share (module docstring)."""
    report = {}
    for envelope in sorted({e for e in envelopes if e is not None}):
        rows = [i for i, e in enumerate(envelopes) if e == envelope]
        shares = []
        for label in sorted({labels[i] for i in rows}):
            members = latents[[i for i in rows if labels[i] == label]]
            shares.append((members.mean(0).pow(2).mean() / members.pow(2).mean()).item())
        report[envelope] = {
            "clips": len(rows),
            "power_per_part": power_per_part(latents[rows], parts, view),
            "class_mean_share": round(float(np.mean(shares)), 3),
        }
    return report


@torch.no_grad()
def denoiser_levels(denoiser, latents: torch.Tensor, text: torch.Tensor, envelopes: list[str | None],
                    sigmas=(1.0, 2.0, 4.0, 8.0), parts: int = 8, clips_per_envelope: int = 24, seed: int = 0,
                    view=None) -> dict:
    """Per envelope and σ: the power in each of `parts` spans of the frames of D(z_0 + σ·n, σ, c) (`denoiser`: a
    `teacher_denoiser`; `text`: the clips' conditioning, (clips, tokens, width)), over the first
    `clips_per_envelope` clips of each envelope, with the same noise draw for every envelope; beside z_0's."""
    generator = torch.Generator().manual_seed(seed)
    noise = {sigma: torch.randn((clips_per_envelope, *latents.shape[1:]), generator=generator) for sigma in sigmas}
    report = {}
    for envelope in sorted({e for e in envelopes if e is not None}):
        rows = [i for i, e in enumerate(envelopes) if e == envelope][:clips_per_envelope]
        z0 = latents[rows]
        report[envelope] = {"clips": len(rows), "data": power_per_part(z0, parts, view)}
        for sigma in sigmas:
            z_sigma = z0 + sigma * noise[sigma][: len(rows)]
            denoised = denoiser.denoise(z_sigma, torch.full((len(rows),), sigma), text[rows])
            report[envelope][f"sigma_{sigma:g}"] = power_per_part(denoised, parts, view)
    return report


class ClassGaussianDenoiser:
    """The Bayes-optimal denoiser if each class's latents were Gaussian with independent elements: per class the mean
    μ and variance v of every (channel, frame) over its clips, D(z, σ, c) = μ_c + v_c / (v_c + σ²) · (z − μ_c). The
    reference for a teacher's levels: what a denoiser that knows only each class's per-frame statistics outputs (it
    keeps a fade at every σ, by shrinking the quiet frames more), and, solved from pure noise, samples with each
    class's envelope. `cond`: (batch, 1, 1) float class indices, as `class_conditioning` gives."""

    def __init__(self, latents: torch.Tensor, classes: torch.Tensor):
        members = [latents[classes == k] for k in range(int(classes.max()) + 1)]
        self.mean = torch.stack([m.mean(0) for m in members])
        self.variance = torch.stack([m.var(0) for m in members])

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        k = cond.reshape(len(x)).long()
        mean, variance = self.mean[k], self.variance[k]
        return mean + variance / (variance + sigma[:, None, None] ** 2) * (x - mean)


def class_conditioning(labels: list[str]) -> tuple[torch.Tensor, dict]:
    """`ClassGaussianDenoiser`'s conditioning of clips with these class labels, (clips, 1, 1), and label → index."""
    index = {label: k for k, label in enumerate(sorted(set(labels)))}
    return torch.tensor([float(index[label]) for label in labels])[:, None, None], index


@torch.no_grad()
def envelope_worth(variance: torch.Tensor, sigmas=(0.5, 1.0, 2.0, 4.0, 8.0)) -> dict:
    """What knowing the envelope is worth in the denoising loss, for Gaussian latents with per-(channel, frame) variance
    `variance` (classes, channels, frames), e.g. `ClassGaussianDenoiser.variance`: at each σ the expected squared
    error of the Wiener denoiser v/(v + σ²)·z minus that of the best denoiser that knows each class's channels but
    not its envelope (one gain per channel, v̄/(v̄ + σ²) with v̄ the channel's mean over the frames), relative to the
    clips' power ‖z_0‖². Exact for Gaussian latents, no noise draws. A small number means the loss hardly rewards a
    fade at that σ, so training learns it last (recipes/procedural/README.md)."""
    power = variance.sum()
    worth = {}
    for sigma in sigmas:
        s2 = sigma**2
        wiener = (variance * s2 / (variance + s2)).sum()
        gain = variance.mean(-1, keepdim=True) / (variance.mean(-1, keepdim=True) + s2)
        flat = (variance * (1 - gain) ** 2 + gain**2 * s2).sum()
        worth[f"sigma_{sigma:g}"] = round(((flat - wiener) / power).item(), 4)
    return worth


@torch.no_grad()
def denoising_errors(denoiser, latents: torch.Tensor, cond: torch.Tensor, sigmas=(0.5, 1.0, 2.0, 4.0, 8.0),
                     seed: int = 0) -> dict:
    """Relative error ‖D(z_0 + σ·n, σ, c) − z_0‖² / ‖z_0‖² of `denoiser` on these clips at each σ (one noise draw)."""
    generator = torch.Generator().manual_seed(seed)
    errors = {}
    for sigma in sigmas:
        z_sigma = latents + sigma * torch.randn(latents.shape, generator=generator)
        denoised = denoiser.denoise(z_sigma, torch.full((len(latents),), sigma), cond)
        errors[f"sigma_{sigma:g}"] = round(((denoised - latents) ** 2).sum().item() / (latents**2).sum().item(), 3)
    return errors


@torch.no_grad()
def sampling_levels(denoiser, text: dict, noise: torch.Tensor, sigmas, report_sigmas=(16.0, 8.0, 4.0, 2.0, 1.0, 0.5),
                    parts: int = 8, view=None) -> dict:
    """Per caption (`text`: name → (1, tokens, width) conditioning) the power in each of `parts` spans of the frames of
    D(x_σ, σ, c) along an Euler solve of the probability-flow ODE, x ← D + (x − D)·σ_next/σ, from `noise`·σ_0 over the
    decreasing grid `sigmas` (ending at 0), at the grid points nearest to `report_sigmas`; "final": the solution's."""
    sigmas = [float(v) for v in sigmas]
    report_at = {min(range(len(sigmas) - 1), key=lambda i: abs(math.log(sigmas[i] / r))) for r in report_sigmas}
    report = {}
    for name, cond in text.items():
        x, rows = noise * sigmas[0], {}
        for i in range(len(sigmas) - 1):
            d = denoiser.denoise(x, torch.full((len(x),), sigmas[i]), cond.expand(len(x), *cond.shape[1:]))
            if i in report_at:
                rows[f"sigma_{sigmas[i]:.3g}"] = power_per_part(d, parts, view)
            x = d + (x - d) * (sigmas[i + 1] / sigmas[i])
        report[name] = {**rows, "final": power_per_part(x, parts, view)}
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the recipe's data folder (its train split is read)")
    parser.add_argument("--vae", default=None, help="VAE folder from train_vae.py (default: the --teacher's)")
    parser.add_argument("--teacher", default=None, help="teacher pipeline folder: also print its denoiser's levels")
    parser.add_argument("--latent-cache", default=None, help="train_teacher.py's --latent-cache folder, to reuse it")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.vae is None and args.teacher is None:
        parser.error("give --vae, --teacher or both")
    pipe = SoundCTMPipeline.from_pretrained(args.teacher, dtype=torch.float32) if args.teacher else None
    vae = AutoencoderGaussianDAC.from_pretrained(args.vae).eval() if args.vae else pipe.vae
    records, mean, _ = training_posteriors(vae, args.data, args.latent_cache)
    latents = vae.standardize(mean).float()
    view = codec_view(vae, latents)
    labels, envelopes = [r["label"] for r in records], [r.get("envelope") for r in records]
    report = latent_levels(latents, labels, envelopes, view=view)
    if view is not None:
        print("gain channel: power per eighth of the rendered (codec) latents; class-mean share of all channels, "
              "then of the gain channel alone")
    gain_report = latent_levels(latents[:, :1], labels, envelopes) if view is not None else None
    for envelope, row in report.items():
        gain_share = f" / {gain_report[envelope]['class_mean_share']:.3f}" if gain_report else ""
        print(f"{envelope:9s} {row['clips']:4d} clips  power per eighth {' '.join(f'{v:.3f}' for v in row['power_per_part'])}  "
              f"class-mean share {row['class_mean_share']:.3f}{gain_share}")  # fmt: skip

    if pipe is None:
        return
    captions = sorted({r["caption"] for r in records})
    unique = pipe.encode_text(captions, torch.device("cpu"))
    position = {caption: i for i, caption in enumerate(captions)}
    text = unique[[position[r["caption"]] for r in records]]
    denoiser = teacher_denoiser(pipe)
    classes, class_index = class_conditioning(labels)
    # the reference is fitted on half of each class's clips; the error comparison uses the other half
    fit, held = torch.arange(0, len(records), 2), torch.arange(1, len(records), 2)
    reference = ClassGaussianDenoiser(latents[fit], classes[fit, 0, 0])
    everything = ClassGaussianDenoiser(latents, classes[:, 0, 0])
    print("\nwhat knowing the envelope is worth in the loss, share of the clips' power (envelope_worth; all clips):")
    for envelope in sorted({e for e in envelopes if e is not None}):
        members = sorted({int(classes[i]) for i, e in enumerate(envelopes) if e == envelope})
        share = latents[[i for i, e in enumerate(envelopes) if e == envelope]].pow(2).sum() / latents.pow(2).sum()
        print(f"{envelope:9s} " + "  ".join(f"{k} {v:.4f}" for k, v in envelope_worth(everything.variance[members]).items())
              + f"  (its clips: {share.item():.1%} of all training clips' power)")
    print(f"\nrelative denoising error on {len(held)} training clips that the reference was not fitted on:")
    for name, model, conditioning in (("teacher", denoiser, text[held]), ("reference", reference, classes[held])):
        print(f"{name:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in denoising_errors(model, latents[held], conditioning).items()))
    first = {}
    for i, e in enumerate(envelopes):
        first.setdefault(e, i)
    chosen = {e: records[i] for e, i in first.items() if e is not None}
    grid = pipe.scheduler.karras_sigmas(40).tolist() + [0.0]  # the teacher's Heun-40 grid
    noise = torch.randn((8, *latents.shape[1:]), generator=torch.Generator().manual_seed(0))
    for name, model, conditioning, paths in (
        (args.teacher, denoiser, text, {e: pipe.encode_text([r["caption"]], torch.device("cpu")) for e, r in chosen.items()}),
        ("per-class diagonal Gaussian (ClassGaussianDenoiser, the reference; half the clips)", reference, classes,
         {e: torch.tensor([[[float(class_index[r["label"]])]]]) for e, r in chosen.items()}),
    ):
        print(f"\n{name}: power per eighth of the denoised output D(z_0 + σ·n, σ, caption)")
        print_levels(denoiser_levels(model, latents, conditioning, envelopes, view=view), width=9)
        print(f"\non its own sampling path (8 seeds, no CFG): power per eighth of D, captions "
              f"{ {e: r['caption'] for e, r in chosen.items()} }")  # fmt: skip
        print_levels(sampling_levels(model, paths, noise, grid, view=view), width=12)


if __name__ == "__main__":
    main()
