"""Stage 2: train the demo's Gaussian-DAC VAE (AutoencoderGaussianDAC, a small config) on the procedural clips.

    python -m recipes.procedural.train_vae --data runs/procedural/data --out runs/procedural/vae

Start: `--init linear` (the default) makes the VAE, before any training, the lapped-transform codec of the data's
leading principal directions (`pca_filterbank`, `linear_start`): space-to-depth copies through the strided
convolutions, the sine-windowed basis in the encoder's last and the decoder's first one, identity residual units,
nearly linear Snakes. It reconstructs the waveform from step 0 (relative error 0.18 at latent_dim 128), where the
randomly initialised network (`--init lsuv`, `initialize`) does not learn to fit even the waveform's squared error
in 150 steps (probe_vae_fit.py). Training then makes it nonlinear.

Losses, on random crops (those quieter than -40 dBFS skipped, as DAC's loader does): DAC's multi-scale mel loss
(L1 of log mel magnitude at 6 window sizes) + a shape term (`--shape-loss`: the output rescaled to the target's RMS,
or spectral convergence), + the L1 of frame log-power (loudness), + a frame-mean (DC) term, + a small KL to N(0, 1);
see `reconstruction_losses` for why shape and level are split. No adversarial or feature-matching loss (DAC has
both): they would double the cost of a step on this CPU. No weight norm either (the class has plain convolutions,
the authors fold theirs before inference). `--compile` runs the training forward passes through torch.compile.

Status: see README.md (the table of runs and where the stage stands).

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

from soundctm import AutoencoderGaussianDAC
from soundctm.autoencoder_gaussian_dac import DecoderBlock, EncoderBlock, ResidualUnit, Snake1d

from .common import add_run_arguments, start_run
from .evaluate import accuracy, content_distance, features, frechet_distance, mel_filterbank
from .make_data import read_split


# Hop 1024 (176 latent frames per 4.09 s clip; the authors' hop): with encoder_dim 16 every encoder block but the
# last has the channels to carry every phase of its input, which `linear_start` needs. latent_dim is --latent-dim.
VAE_CONFIG = dict(
    encoder_dim=16,
    encoder_rates=[4, 4, 8, 8],
    latent_dim=64,
    decoder_dim=256,
    decoder_rates=[8, 8, 4, 4],
    sampling_rate=44100,
    audio_channels=1,
)
# (window, mel bands) of the multi-scale mel loss, as DAC's, from 64 to 2048 samples.
MEL_SCALES = ((2048, 320), (1024, 160), (512, 80), (256, 40), (128, 20), (64, 10))
_MEL_BANKS = {n: torch.from_numpy(mel_filterbank(m, n, f_min=0.0, f_max=22050.0)).float() for n, m in MEL_SCALES}
LEVEL_FRAME = 1024  # frame of the loudness term, in samples (23 ms)
SILENT_CROP_RMS = 0.01  # training crops quieter than -40 dBFS are skipped, as DAC's loader does with its loudness cutoff


def _magnitudes(pred: torch.Tensor, target: torch.Tensor, n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """|STFT| (hop n_fft/4, Hann) of two (batch · channels, samples) signals."""
    window = torch.hann_window(n_fft, device=pred.device)
    return tuple(torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs() for x in (pred, target))


def _floored_log_l1(pred_mag: torch.Tensor, target_mag: torch.Tensor, floor_db: float) -> torch.Tensor:
    """L1 of log10 magnitudes offset by a floor `floor_db` below each target clip's loudest cell."""
    floor = target_mag.amax(dim=(1, 2), keepdim=True).clamp(min=1e-4) * 10 ** (-floor_db / 20)
    return F.l1_loss(torch.log10(pred_mag + floor), torch.log10(target_mag + floor))


def spectral_loss(pred: torch.Tensor, target: torch.Tensor, floor_db: float = 50.0) -> torch.Tensor:
    """Multi-scale mel loss, as DAC's: L1 of log10 mel *magnitude* over 6 window sizes, offset by a floor `floor_db`
    below each target clip's loudest mel cell instead of DAC's fixed clamp (most cells of these sparse sounds are
    empty, and a fixed clamp lets an all-quiet output match them exactly)."""
    pred, target = pred.flatten(0, 1), target.flatten(0, 1)
    loss = pred.new_zeros(())
    for n_fft, _ in MEL_SCALES:
        bank = _MEL_BANKS[n_fft].to(pred.device)
        mag_p, mag_t = _magnitudes(pred, target, n_fft)
        loss = loss + _floored_log_l1(bank @ mag_p, bank @ mag_t, floor_db)
    return loss / len(MEL_SCALES)


def linear_spectral_loss(pred: torch.Tensor, target: torch.Tensor, floor_db: float = 50.0) -> torch.Tensor:
    """L1 of log10 STFT magnitude on the linear frequency axis (2048 and 512 windows), floored as `spectral_loss`.
    High mel bands are over 1 kHz wide, so the mel loss barely sees a narrow whistle up there; a small transposed-
    convolution decoder makes exactly that (a steady tone near 18 kHz), and this term removes it."""
    pred, target = pred.flatten(0, 1), target.flatten(0, 1)
    return sum(_floored_log_l1(*_magnitudes(pred, target, n_fft), floor_db) for n_fft in (2048, 512)) / 2


def spectral_convergence(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖|S_target| − |S_pred|‖ / ‖|S_target|‖ of linear STFT magnitudes (2048, 512, 128 windows): energy in the wrong
    place costs in proportion to its energy, so a loud artefact (a whistle, an offset) cannot hide in a few cells."""
    pred, target = pred.flatten(0, 1), target.flatten(0, 1)
    loss = pred.new_zeros(())
    for n_fft in (2048, 512, 128):
        mag_p, mag_t = _magnitudes(pred, target, n_fft)
        loss = loss + (torch.linalg.norm(mag_t - mag_p, dim=(1, 2)) / torch.linalg.norm(mag_t, dim=(1, 2)).clamp(min=1e-6)).mean()
    return loss / 3


def frames(audio: torch.Tensor) -> torch.Tensor:
    """(batch · channels, frames, LEVEL_FRAME) non-overlapping frames."""
    return audio.flatten(0, 1).unfold(-1, LEVEL_FRAME, LEVEL_FRAME)


def reconstruction_losses(
    pred: torch.Tensor, target: torch.Tensor, shape_loss: str = "rescaled"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shape, level, offset): the shape term; the L1 of frame log-variance (loudness); and the squared error of
    frame means (DC and infrasound), relative to the target's power.

    `shape_loss` "rescaled": the mel + linear log-STFT losses of the output rescaled to the target's RMS;
    "convergence": the mel loss + spectral convergence of the output as it is.

    Splitting shape and level is what makes a small decoder train in minutes. A plain log-mel loss makes a quiet
    output the cheapest early answer (a decoder that has not yet learned where the energy goes is penalised for
    every empty cell it fills) and, once the output is quiet, its gradient vanishes: training sits at near-silence.
    The rescaled shape term does not change when the output is scaled, so shrinking gains nothing; the level term, in
    log units, makes a quiet output expensive (-40 dB costs 4) with a gradient that does not vanish. Mel bands do not
    see DC, so without the offset term the decoder meets the level term with a DC offset instead of the sound."""
    pred_frames, target_frames = frames(pred), frames(target)
    level = F.l1_loss(torch.log10(pred_frames.var(-1) + 1e-8), torch.log10(target_frames.var(-1) + 1e-8))
    offset = F.mse_loss(pred_frames.mean(-1), target_frames.mean(-1)) / target.pow(2).mean().clamp(min=1e-6)
    if shape_loss == "convergence":
        return spectral_loss(pred, target) + spectral_convergence(pred, target), level, offset
    if shape_loss != "rescaled":
        raise ValueError(f"shape_loss must be 'rescaled' or 'convergence', got {shape_loss!r}")
    centred = pred - pred.mean(dim=-1, keepdim=True)
    rescaled = centred * target.std(dim=(1, 2), keepdim=True) / centred.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().clamp(min=1e-8)
    return spectral_loss(rescaled, target) + linear_spectral_loss(rescaled, target), level, offset


@torch.no_grad()
def initialize(
    vae, audio: torch.Tensor, audio_std: float = 0.1, log_variance: float = -8.0, identity_residuals: bool = False
) -> None:
    """Data-dependent initialisation (LSUV, Mishkin & Matas 2016) on a batch of training crops: in forward order,
    every convolution's weights are rescaled so that its output has unit standard deviation (the decoder's last one:
    `audio_std`), biases zeroed; the posterior's mean channels come out at unit std, its log-variance at
    `log_variance` (std 0.018).

    `identity_residuals`: every residual unit starts as the identity (its last convolution zeroed, as SkipInit /
    ReZero do), so the network starts as a shallow chain of strided convolutions that gradient descent fits quickly,
    and the residual units join in as they learn.

    One forward pass does it: each convolution is rescaled by a forward hook as it runs, and the hook hands the
    rescaled output on, so every later layer is measured on the input it will see.

    With the class's DAC initialisation (std 0.02) the latents of this small encoder have std ~0.006 and the decoder
    output hardly depends on them (its biases dominate); the decoder then learns to ignore its input."""
    kinds = (nn.Conv1d, nn.ConvTranspose1d)
    convs = [m for m in vae.encoder.modules() if isinstance(m, kinds)] + [vae.pre_conv, vae.post_conv]
    convs += [m for m in vae.decoder.modules() if isinstance(m, kinds)]
    last, latent_dim = convs[-1], vae.codec_dim

    def rescale(module, _, out):
        if module is vae.pre_conv:
            scale = out[:, :latent_dim].std().reciprocal()
            module.weight[:latent_dim] *= scale
            module.weight[latent_dim:] = 0.0
            module.bias[latent_dim:] = log_variance
            return torch.cat([out[:, :latent_dim] * scale, torch.full_like(out[:, latent_dim:], log_variance)], dim=1)
        scale = (audio_std if module is last else 1.0) / out.std()
        module.weight *= scale
        return out * scale

    skipped = set()
    if identity_residuals:
        for unit in vae.modules():
            if isinstance(unit, ResidualUnit):
                skipped.add(unit.block[-1])
                unit.block[-1].weight.zero_()
    for m in convs:
        if m.bias is not None:
            m.bias.zero_()
    convs = [m for m in convs if m not in skipped]
    hooks = [m.register_forward_hook(rescale) for m in convs]
    try:
        vae.decode(vae.encode(audio).latent_dist.mean)
    finally:
        for hook in hooks:
            hook.remove()


def sine_window(length: int) -> np.ndarray:
    """sin(π(n + ½)/length): its squares add up to one at 50 % overlap (Princen-Bradley)."""
    return np.sin(np.pi * (np.arange(length) + 0.5) / length)


def random_crops(audio: np.ndarray, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """(n, length) float32 crops of random int16 clips at random offsets, skipping those quieter than SILENT_CROP_RMS."""
    out = []
    while len(out) < n:
        clip, offset = rng.integers(0, len(audio)), rng.integers(0, audio.shape[1] - length + 1)
        x = audio[clip, offset : offset + length].astype(np.float32) / 32768.0
        if np.sqrt(np.mean(x**2)) >= SILENT_CROP_RMS:
            out.append(x)
    return np.stack(out)


def pca_filterbank(audio: np.ndarray, hop: int, count: int, windows: int = 16384, seed: int = 0) -> np.ndarray:
    """The `count` leading principal directions of sine-windowed frames of 2·hop samples of `audio` (int16 clips,
    frames quieter than SILENT_CROP_RMS skipped), shape (count, 2·hop), as analysis filters; the same rows times the
    window are the synthesis filters. With all 2·hop rows this is a perfect-reconstruction lapped transform (the sine
    window's squares add up to one at 50 % overlap); with fewer it keeps the subspace that holds most of the energy."""
    frames = random_crops(audio, np.random.default_rng(seed), windows, 2 * hop).astype(np.float64) * sine_window(2 * hop)
    _, vectors = np.linalg.eigh(frames.T @ frames / len(frames))
    return vectors[:, ::-1][:, :count].T.copy()


@torch.no_grad()
def linear_start(vae, basis: np.ndarray, snake_alpha: float = 1e-3, log_variance: float = -8.0) -> None:
    """Function-preserving initialisation: the VAE starts as the lapped-transform codec of `basis` (`vae.codec_dim`
    rows of 2·hop analysis filters, e.g. `pca_filterbank`), exactly up to its slightly nonlinear Snake and tanh.

    Every strided convolution but the encoder's last is a space-to-depth copy (each output channel one phase of the
    input), the encoder's last one applies the sine-windowed basis to a 2·hop window, the decoder's first transposed
    convolution overlap-adds the windowed basis, and the later ones are depth-to-space copies; residual units start
    as the identity and every Snake's α as `snake_alpha` (x + sin²(αx)/α ≈ x). So the chain begins as a codec that
    already reconstructs, and training bends it into a nonlinear one instead of searching for one from noise.

    Raises ValueError when the config has too few channels to carry every phase (e.g. hop 2048 with encoder_dim 16)."""
    hop = vae.hop_length
    latent_dim = vae.codec_dim
    if basis.shape != (latent_dim, 2 * hop):
        raise ValueError(f"basis must have shape (codec_dim, 2 * hop) = ({latent_dim}, {2 * hop}), got {basis.shape}")
    windowed = torch.from_numpy(basis * sine_window(2 * hop)).float()  # analysis and synthesis filters alike
    for module in vae.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            module.weight.zero_()
            if module.bias is not None:
                module.bias.zero_()
        if isinstance(module, Snake1d):
            module.alpha.fill_(snake_alpha)

    def need(channels, available, where):
        if channels > available:
            raise ValueError(f"{where} needs {channels} channels to carry every phase, the config gives {available}")

    # Encoder: copy the waveform, then space-to-depth, then the windowed basis.
    layers = list(vae.encoder.block)
    layers[0].weight[0, 0, layers[0].kernel_size[0] // 2] = 1.0
    offsets, frame = [0], 1  # sample offset of each used channel within a frame of `frame` samples
    blocks = [m for m in layers if isinstance(m, EncoderBlock)]
    for i, block in enumerate(blocks):
        conv, stride = block.block[-1], block.block[-1].stride[0]
        pad = conv.padding[0]
        if i < len(blocks) - 1:
            need(len(offsets) * stride, conv.out_channels, f"encoder block {i}")
            new = []
            for c, o in enumerate(offsets):
                for r in range(stride):
                    conv.weight[len(new), c, r + pad] = 1.0
                    new.append(o + r * frame)
            offsets, frame = new, frame * stride
        else:
            need(latent_dim, conv.out_channels, f"encoder block {i}")
            for k in range(conv.kernel_size[0]):
                for c, o in enumerate(offsets):
                    conv.weight[:latent_dim, c, k] = windowed[:, frame * k + o]
    out_conv = layers[-1]
    out_conv.weight[torch.arange(latent_dim), torch.arange(latent_dim), out_conv.kernel_size[0] // 2] = 1.0
    vae.pre_conv.weight[torch.arange(latent_dim), torch.arange(latent_dim), 0] = 1.0
    vae.pre_conv.bias[latent_dim:] = log_variance

    # Decoder: identity to the first block, overlap-add of the windowed basis, then depth-to-space.
    vae.post_conv.weight[torch.arange(latent_dim), torch.arange(latent_dim), 0] = 1.0
    layers = list(vae.decoder.model)
    need(latent_dim, layers[0].out_channels, "the decoder's first convolution")
    layers[0].weight[torch.arange(latent_dim), torch.arange(latent_dim), layers[0].kernel_size[0] // 2] = 1.0
    frame = hop
    for i, block in enumerate(m for m in layers if isinstance(m, DecoderBlock)):
        conv, stride = block.block[1], block.block[1].stride[0]
        pad, new_frame = conv.padding[0], frame // stride
        need(new_frame, conv.out_channels, f"decoder block {i}")
        if i == 0:
            for k in range(conv.kernel_size[0]):
                conv.weight[:latent_dim, :new_frame, k] = windowed[:, new_frame * k : new_frame * (k + 1)]
        else:
            for o in range(frame):  # input phase o -> output phase o % new_frame of frame o // new_frame
                conv.weight[o, o % new_frame, o // new_frame + pad] = 1.0
        frame = new_frame
    layers[-2].weight[0, 0, layers[-2].kernel_size[0] // 2] = 1.0


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
def encode_latents(vae, clips: list[np.ndarray]) -> torch.Tensor:
    """Standardised posterior means of float clips, flattened: (clips, latent_dim · frames)."""
    audio = np.stack([np.clip(c, -1, 1) for c in clips]) * 32767.0
    return vae.standardize(encode_posteriors(vae, audio.astype(np.int16))[0]).flatten(1)


def latent_distance(vae, clips_a: list[np.ndarray], clips_b: list[np.ndarray], encode=encode_latents) -> list[float]:
    """Cosine distance (1 − cosine similarity) between the standardised posterior means of clip pairs: 0 for the
    same sound, about 1 for two unrelated ones. A feature distance in the spirit of the paper's CLAP-LPAPS (the
    encoder is the only learned audio network the recipe has): it compares what the decoder is asked to render, so
    two renderings of the same noise-like content count as close, which a spectrogram distance cannot see.
    `encode(vae, clips)` may be a caching stand-in for `encode_latents`."""
    a, b = encode(vae, clips_a), encode(vae, clips_b)
    return (1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).tolist()


@torch.no_grad()
def reconstruct(vae, audio_int16: np.ndarray, batch_size: int = 8) -> list[np.ndarray]:
    """Decoded posterior means of whole clips, as mono float arrays."""
    clips = []
    for i in range(0, len(audio_int16), batch_size):
        latents = encode_posteriors(vae, audio_int16[i : i + batch_size])[0]
        clips.extend(vae.decode(latents).sample[:, 0].clamp(-1, 1).numpy())
    return clips


@torch.no_grad()
def reconstruction_report(vae, data_dir: str) -> dict:
    """Evaluator scores of the VAE's reconstructions of the test clips (a ceiling for every generated row)."""
    records, audio = read_split(data_dir, "test")
    real = [a.astype(np.float32) / 32768.0 for a in audio]
    recon = reconstruct(vae, audio)
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
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=16384, help="training crop in samples (a multiple of the hop)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--level-weight", type=float, default=1.0, help="weight of the frame log-power term")
    parser.add_argument("--offset-weight", type=float, default=10.0, help="weight of the frame-mean (DC) term")
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--shape-loss", choices=("rescaled", "convergence"), default="rescaled")
    parser.add_argument("--init-from", default=None, help="start from this VAE folder instead of initialising")
    parser.add_argument(
        "--init", choices=("lsuv", "linear"), default="linear",
        help="lsuv: `initialize` (random weights rescaled); linear: `linear_start` from the data's PCA filterbank",
    )  # fmt: skip
    parser.add_argument("--latent-dim", type=int, default=VAE_CONFIG["latent_dim"])
    parser.add_argument(
        "--gain-channel", action="store_true",
        help="split the latent into a log-gain channel and latent_dim - 1 gain-normalised channels (the class's gain_channel)",
    )  # fmt: skip
    parser.add_argument(
        "--gain-weight", type=float, default=1.0,
        help="with --gain-channel: the gain channel's standard deviation in the diffusion model's space, in units of "
        "the others' (its latents_std is divided by this), so its share of a squared-error loss grows by its square",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the encoder and decoder for training (fuses the Snake activations)"
    )
    parser.add_argument("--stats-every", type=int, default=6, help="latent statistics from every n-th training clip")
    add_run_arguments(parser, max_minutes=25.0)
    args = parser.parse_args(argv)
    start, rng = start_run(args)

    _, audio = read_split(args.data, "train")
    print(f"{len(audio)} training clips loaded in {time.time() - start:.0f} s", flush=True)

    def crops(n: int) -> torch.Tensor:
        return torch.from_numpy(random_crops(audio, rng, n, args.crop))[:, None]

    if args.gain_weight <= 0 or (args.gain_weight != 1.0 and not args.gain_channel):
        parser.error("--gain-weight must be > 0 and needs --gain-channel")
    config = {**VAE_CONFIG, "latent_dim": args.latent_dim, "gain_channel": args.gain_channel}
    vae = AutoencoderGaussianDAC(**config)
    if args.crop % vae.hop_length:
        raise ValueError(f"--crop must be a multiple of the hop length {vae.hop_length}, got {args.crop}")
    if args.init_from:
        vae.load_state_dict(AutoencoderGaussianDAC.from_pretrained(args.init_from).state_dict())
    elif args.init == "linear":
        linear_start(vae, pca_filterbank(audio, vae.hop_length, vae.codec_dim, seed=args.seed))
    else:
        initialize(vae, crops(32))
    print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, hop {vae.hop_length}, "
          f"initialised in {time.time() - start:.0f} s", flush=True)  # fmt: skip
    eager_forwards = vae.encoder.forward, vae.decoder.forward
    if args.compile:  # on the instances' forward methods, so the state dict keeps its names
        vae.encoder.forward, vae.decoder.forward = torch.compile(vae.encoder.forward), torch.compile(vae.decoder.forward)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.8, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    )

    vae.train()
    step_time, train_start = time.time(), time.time()
    for step in range(args.steps):
        x = crops(args.batch_size)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        shape, level, offset = reconstruction_losses(y, x, args.shape_loss)
        kl = 0.5 * torch.mean(posterior.mean**2 + posterior.var - 1.0 - posterior.logvar)
        loss = shape + args.level_weight * level + args.offset_weight * offset + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        optimizer.step()
        schedule.step()

        if step % 50 == 0 or step == args.steps - 1:
            rate = (time.time() - step_time) / (1 if step == 0 else 50)
            step_time = time.time()
            ratio = (y.std(dim=(1, 2)) / x.std(dim=(1, 2))).median().item()
            print(
                f"step {step:5d}  loss {loss.item():.4f}  shape {shape.item():.4f}  level {level.item():.4f}  offset {offset.item():.4f}  "
                f"kl {kl.item():.3f}  rms out/in {ratio:.2f}  grad {grad_norm.item():.2f}  {rate:.2f} s/step  "
                f"{(time.time() - start) / 60:.1f} min",
                flush=True,
            )
        if (time.time() - train_start) / 60 > args.max_minutes:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    train_minutes = (time.time() - train_start) / 60

    vae.eval()
    vae.encoder.forward, vae.decoder.forward = eager_forwards  # whole clips from here on: no recompiling per shape
    # Statistics of posterior samples, which is what the teacher and the distillation train on.
    mean, std = encode_posteriors(vae, audio[:: args.stats_every])
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed))
    mean, std = z.mean(dim=(0, 2)), z.std(dim=(0, 2))
    if args.gain_channel:
        std[0] /= args.gain_weight
    vae.register_to_config(latents_mean=[round(v, 6) for v in mean.tolist()], latents_std=[round(v, 6) for v in std.tolist()])
    vae.save_pretrained(args.out)

    report = {**config, **vars(args), "steps": step + 1, "train_minutes": round(train_minutes, 1)}  # steps run, not asked
    report.update(reconstruction_report(vae, args.data))
    report["total_minutes"] = round((time.time() - start) / 60, 1)
    with open(Path(args.out) / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: report[k] for k in ("steps", "train_minutes", "total_minutes", "real_accuracy",
                                             "reconstruction_accuracy", "reconstruction_content_distance_db",
                                             "reconstruction_frechet")}), flush=True)


if __name__ == "__main__":
    main()
