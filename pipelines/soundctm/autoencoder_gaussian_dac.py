"""The Gaussian DAC VAE of SoundCTM-DiT (Saito et al. 2025): the Descript Audio Codec's convolutional encoder and
decoder with Snake activations, without quantisers, and a diagonal-Gaussian latent (mono 44.1 kHz, hop 1024,
64 channels in the authors' model).

Module and parameter names follow the authors' `GaussianDAC` one to one, with weight norm folded into plain
convolution weights (weight = g · v / ‖v‖), which is what their code does before inference.

The latent statistics used by the diffusion model live in the config: training standardises
`z_norm = (z - latents_mean) / latents_std * scaling_factor` and the pipeline inverts it before decoding.

This file imports only torch, numpy, diffusers and its sibling `latent_statistics.py`, so that diffusers' dynamic
loader can load it.
"""

import math

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .latent_statistics import LatentStatisticsMixin


class Snake1d(nn.Module):
    """x + sin²(αx)/α, one α per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x):
        inv_alpha = (self.alpha + 1e-9).reciprocal()
        if torch.is_grad_enabled():
            return x + inv_alpha * torch.sin(self.alpha * x).pow(2)
        # Inference: the same value with two fewer passes over the (large) activation; about 2x faster here.
        return torch.addcmul(x, (self.alpha * x).sin_().square_(), inv_alpha)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            nn.Conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            nn.Conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x):
        if torch.is_grad_enabled():
            return x + self.block(x)
        return self.block(x).add_(x)  # inference: no fresh tensor for the sum


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.block = nn.Sequential(
            ResidualUnit(dim // 2, dilation=1),
            ResidualUnit(dim // 2, dilation=3),
            ResidualUnit(dim // 2, dilation=9),
            Snake1d(dim // 2),
            nn.Conv1d(dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x):
        return self.block(x)

    @property
    def halo(self) -> int:
        """Input samples on each side that the outputs of a window depend on beyond it: the residual units' reach and
        the strided convolution's (its kernel spans 2 strides)."""
        return _reach(self.block) + 2 * self.stride


def _reach(module: nn.Module) -> int:
    """How far the stride-1 convolutions of `module` see on each side, in samples: (kernel − 1)/2 · dilation each."""
    return sum(
        (m.kernel_size[0] - 1) // 2 * m.dilation[0] for m in module.modules() if isinstance(m, nn.Conv1d) and m.stride[0] == 1
    )


class DecoderBlock(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.block = nn.Sequential(
            Snake1d(input_dim),
            nn.ConvTranspose1d(
                input_dim, output_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
            ),
            ResidualUnit(output_dim, dilation=1),
            ResidualUnit(output_dim, dilation=3),
            ResidualUnit(output_dim, dilation=9),
        )

    def forward(self, x):
        return self.block(x)

    @property
    def halo(self) -> int:
        """Output samples on each side that depend on input frames outside a window: the residual units' reach
        (3·dilation per kernel-7 convolution) plus the transposed convolution's (its kernel spans 2 strides)."""
        return _reach(self.block) + 2 * self.stride


def apply_in_chunks(fn, x: torch.Tensor, scale: int, halo: int, chunk: int, down: int = 1) -> torch.Tensor:
    """
    `fn(x)` for a time-local `fn` that maps n input samples to n·`scale` output samples (an upsampling block), or to
    n/`down` (a downsampling block, n a multiple of `down`), computed over output chunks of `chunk` samples: each
    chunk runs `fn` on the input window it depends on, widened by `halo` samples on each side (output samples when
    upsampling, input samples when downsampling; zero padding inside `fn` then only touches samples that are cut
    away), and is copied into one output tensor. Equal to `fn(x)` up to float rounding; every intermediate of `fn` is
    chunk-sized.
    """
    if scale != 1 and down != 1:
        raise ValueError("apply_in_chunks takes an upsampling (scale) or a downsampling (down) function, not both")
    frames = x.shape[-1]
    total = frames * scale // down
    # the input window's margin, in output samples per input sample (up) or in input samples per output sample (down)
    margin = -(-halo // scale) + 1 if down == 1 else -(-halo // down) + 1
    out = None
    for start in range(0, total, chunk):
        end = min(total, start + chunk)
        if down == 1:
            first, last = max(0, start // scale - margin), min(frames, -(-end // scale) + margin)
            offset = start - first * scale
        else:
            first, last = max(0, (start - margin) * down), min(frames, (end + margin) * down)
            offset = start - first // down
        y = fn(x[..., first:last])
        if out is None:
            out = y.new_empty(*y.shape[:-1], total)
        out[..., start:end] = y[..., offset : offset + end - start]
    return out


class Encoder(nn.Module):
    def __init__(self, d_model: int, strides: list[int], d_latent: int, audio_channels: int):
        super().__init__()
        layers = [nn.Conv1d(audio_channels, d_model, kernel_size=7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride))
        layers += [Snake1d(d_model), nn.Conv1d(d_model, 2 * d_latent, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)
        self.chunk_elements: int | None = 2**20  # as the decoder's (`Decoder.chunk_elements`)

    def forward(self, x):
        if torch.is_grad_enabled() or self.chunk_elements is None or x.device.type != "cpu" or x.shape[-1] % self.hop:
            return self.block(x)
        layers = list(self.block)
        first = layers[0]  # kernel-7 convolution at the full rate
        x = apply_in_chunks(first, x, 1, 3, max(6, self.chunk_elements // first.out_channels))
        for block in layers[1:-2]:
            chunk = max(2 * block.halo // block.stride, self.chunk_elements // (block.block[-1].in_channels * block.stride))
            x = apply_in_chunks(block, x, 1, block.halo, chunk, down=block.stride)
        return nn.Sequential(*layers[-2:])(x)  # Snake and the kernel-3 convolution at the latent rate

    @property
    def hop(self) -> int:
        return int(np.prod([block.stride for block in self.block if isinstance(block, EncoderBlock)]))


class Decoder(nn.Module):
    def __init__(self, input_channel: int, channels: int, rates: list[int], d_out: int):
        super().__init__()
        layers = [nn.Conv1d(input_channel, channels, kernel_size=7, padding=3)]
        for i, stride in enumerate(rates):
            layers.append(DecoderBlock(channels // 2**i, channels // 2 ** (i + 1), stride))
        output_dim = channels // 2 ** len(rates)
        layers += [Snake1d(output_dim), nn.Conv1d(output_dim, d_out, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        # Inference on the CPU decodes each upsampling block in time chunks of about this many activation values
        # (4 MB): the full-rate activations of a 10 s clip are 170 MB each, and every fresh allocation of that size is
        # mapped and zero-filled page by page, which costs as much as the arithmetic of the op (benchmarks/bench_vae.py).
        # An accelerator's caching allocator reuses its memory, and one pass is what compiles and graphs best there.
        self.chunk_elements: int | None = 2**20

    def forward(self, x):
        if torch.is_grad_enabled() or self.chunk_elements is None or x.device.type != "cpu":
            return self.model(x)
        layers = list(self.model)
        x = layers[0](x)
        for block in layers[1:-3]:
            chunk = max(2 * block.halo, self.chunk_elements // block.block[1].out_channels)
            x = apply_in_chunks(block, x, block.stride, block.halo, chunk)
        tail = nn.Sequential(*layers[-3:])  # Snake, kernel-7 convolution, tanh
        return apply_in_chunks(tail, x, 1, 3, max(6, self.chunk_elements // x.shape[1]))


class AutoencoderGaussianDAC(LatentStatisticsMixin, ModelMixin, ConfigMixin):
    """
    Gaussian DAC variational autoencoder for waveforms.

    Args:
        encoder_dim (`int`, defaults to 64): channels after the first encoder convolution (doubled per block).
        encoder_rates (`list[int]`, defaults to `[4, 4, 8, 8]`): encoder strides; their product is the hop length.
        latent_dim (`int`, defaults to 64): latent channels.
        decoder_dim (`int`, defaults to 1536): channels of the first decoder convolution (halved per block).
        decoder_rates (`list[int]`, defaults to `[8, 8, 4, 4]`): decoder strides; same product as `encoder_rates`.
        sampling_rate (`int`, defaults to 44100).
        audio_channels (`int`, defaults to 1): mono.
        latents_mean, latents_std (`list[float]`, *optional*): per-channel latent statistics (the authors'
            `z_stats.pth`); `None` means 0 and 1.
        scaling_factor (`float`, defaults to 0.5): σ_d; standardised latents are scaled to this standard deviation.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        encoder_dim: int = 64,
        encoder_rates: list[int] = (4, 4, 8, 8),
        latent_dim: int = 64,
        decoder_dim: int = 1536,
        decoder_rates: list[int] = (8, 8, 4, 4),
        sampling_rate: int = 44100,
        audio_channels: int = 1,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scaling_factor: float = 0.5,
    ):
        super().__init__()
        if int(np.prod(encoder_rates)) != int(np.prod(decoder_rates)):
            raise ValueError(
                f"encoder_rates {list(encoder_rates)} and decoder_rates {list(decoder_rates)} must have the same product"
            )
        if decoder_dim % 2 ** len(decoder_rates):
            raise ValueError(f"decoder_dim ({decoder_dim}) must be divisible by 2**len(decoder_rates)")
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_dim:
                raise ValueError(f"{name} must have latent_dim={latent_dim} entries, got {len(stats)}")
        self.encoder = Encoder(encoder_dim, list(encoder_rates), latent_dim, audio_channels)
        self.decoder = Decoder(latent_dim, decoder_dim, list(decoder_rates), audio_channels)
        self.pre_conv = nn.Conv1d(2 * latent_dim, 2 * latent_dim, 1)
        self.post_conv = nn.Conv1d(latent_dim, latent_dim, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def enable_tiling(self, chunk_elements: int = 2**20) -> None:
        """Encode and decode on the CPU (without gradient) in time chunks whose activations hold about
        `chunk_elements` values each: the same output up to float rounding, faster and with a lower peak memory. On by
        default; an accelerator always runs in one pass."""
        if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
            raise ValueError(f"chunk_elements must be a positive int, got {chunk_elements!r}")
        self.encoder.chunk_elements = self.decoder.chunk_elements = chunk_elements

    def disable_tiling(self) -> None:
        """Encode and decode the whole clip in one pass through every layer."""
        self.encoder.chunk_elements = self.decoder.chunk_elements = None

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.config.encoder_rates))

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    def encode(self, audio: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """
        Args:
            audio (`torch.Tensor` of shape `(batch, audio_channels, samples)`): waveform in [-1, 1]; right-padded with
                zeros to a multiple of `hop_length`.
        Returns:
            `AutoencoderKLOutput` whose `latent_dist` is a diagonal Gaussian over `(batch, latent_dim, frames)`.
        """
        if audio.ndim != 3 or audio.shape[1] != self.config.audio_channels:
            raise ValueError(
                f"audio must have shape (batch, {self.config.audio_channels}, samples), got {tuple(audio.shape)}"
            )
        right_pad = -audio.shape[-1] % self.hop_length
        audio = nn.functional.pad(audio, (0, right_pad))
        moments = self.pre_conv(self.encoder(audio))
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """
        Args:
            z (`torch.Tensor` of shape `(batch, latent_dim, frames)`): latent in the VAE's own (unstandardised) scale.
        Returns:
            `DecoderOutput` whose `sample` is `(batch, audio_channels, frames * hop_length)`.
        """
        if z.ndim != 3 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (batch, {self.config.latent_dim}, frames), got {tuple(z.shape)}")
        audio = self.decoder(self.post_conv(z))
        if not return_dict:
            return (audio,)
        return DecoderOutput(sample=audio)

    def forward(self, audio: torch.Tensor, sample_posterior: bool = False, generator=None) -> DecoderOutput:
        posterior = self.encode(audio).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return DecoderOutput(sample=self.decode(z).sample[..., : audio.shape[-1]])
