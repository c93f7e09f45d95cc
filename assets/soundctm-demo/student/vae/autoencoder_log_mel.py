"""A spectral autoencoder: latents that describe what is heard (log-mel magnitudes), not the waveform's phase.

    encode: waveform → |STFT| (Hann, `n_fft`, `stft_hop_length`) → triangular mel filterbank → log(· + `log_floor`)
            → `frames_per_latent` consecutive frames stacked → projection onto `latent_dim` principal directions
    decode: the transposed projection → exp(·) − `log_floor` → the filterbank's pseudo-inverse → fast Griffin-Lim
            (Perraudin et al. 2013: `griffin_lim_iters` iterations with momentum, from a fixed phase) → waveform

A class of sounds (a tone fading out, a sweep) has similar log-mel frames whatever its phase or exact timing, so the
mean latent of its clips still describes it: a diffusion model's output at high noise is then already the sound's
envelope and spectrum, which is what a small model can learn. The projection (`projection`, `center`) is fitted to
data as a PCA of stacked log-mel frames (recipes/procedural/train_codec.py) and saved with the weights; the
filterbank and its pseudo-inverse follow from the config. Every step of the decoder is a torch op, so loss-based
guidance and data consistency backpropagate through it (with Griffin-Lim's phase held fixed: `griffin_lim`); the
encoder has no noise (`latent_dist` has std 0).

The latent statistics used by the diffusion model live in the config, as for the other autoencoders of this package:
`z_norm = (z - latents_mean) / latents_std * scaling_factor`.

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


def mel_filterbank(n_mels: int, n_fft: int, sampling_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular filters equally spaced on the (HTK) mel scale from f_min to f_max, `(n_mels, n_fft // 2 + 1)`."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sampling_rate)
    edges = 700.0 * (10 ** (np.linspace(mel(f_min), mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.clip(np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)), 0.0, None)
    return torch.from_numpy(bank).float()


class AutoencoderLogMel(LatentStatisticsMixin, ModelMixin, ConfigMixin):
    """
    Log-mel spectral autoencoder with a Griffin-Lim decoder (mono).

    Args:
        sampling_rate (`int`, defaults to 44100).
        n_fft (`int`, defaults to 2048): STFT size (Hann window of the same length).
        stft_hop_length (`int`, defaults to 1024): STFT hop.
        frames_per_latent (`int`, defaults to 2): STFT frames stacked into one latent frame, so a latent frame spans
            `hop_length = frames_per_latent * stft_hop_length` samples and keeps the STFT's time resolution inside it.
        n_mels (`int`, defaults to 128): mel bands from `f_min` to `f_max` (`None`: half the sampling rate).
        log_floor (`float`, defaults to 0.01): added to the mel magnitudes before the log (about −90 dB re a
            full-scale sine), so that silence is one value instead of the log of quantisation noise.
        latent_dim (`int`, defaults to 64): channels of the latent: principal directions of the stacked log-mel frames.
        griffin_lim_iters (`int`, defaults to 16), griffin_lim_momentum (`float`, defaults to 0.99): the decoder's
            phase reconstruction (fast Griffin-Lim; momentum 0 is the original algorithm).
        audio_channels (`int`, defaults to 1): mono.
        latents_mean, latents_std (`list[float]`, *optional*): per-channel latent statistics; `None` means 0 and 1.
        scaling_factor (`float`, defaults to 0.5): σ_d; standardised latents are scaled to this standard deviation.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sampling_rate: int = 44100,
        n_fft: int = 2048,
        stft_hop_length: int = 1024,
        frames_per_latent: int = 2,
        n_mels: int = 128,
        f_min: float = 20.0,
        f_max: float | None = None,
        log_floor: float = 0.01,
        latent_dim: int = 64,
        griffin_lim_iters: int = 16,
        griffin_lim_momentum: float = 0.99,
        audio_channels: int = 1,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scaling_factor: float = 0.5,
    ):
        super().__init__()
        f_max = sampling_rate / 2 if f_max is None else f_max
        if not 0 <= f_min < f_max <= sampling_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sampling_rate / 2, got f_min={f_min}, f_max={f_max}")
        if stft_hop_length > n_fft or n_fft % stft_hop_length:
            raise ValueError(f"stft_hop_length ({stft_hop_length}) must divide n_fft ({n_fft})")
        if audio_channels != 1:
            raise ValueError(f"AutoencoderLogMel is mono: audio_channels must be 1, got {audio_channels}")
        if log_floor <= 0 or griffin_lim_iters < 0 or not 0 <= griffin_lim_momentum < 1:
            raise ValueError("need log_floor > 0, griffin_lim_iters >= 0 and griffin_lim_momentum in [0, 1)")
        frame_dim = n_mels * frames_per_latent
        if not 0 < latent_dim <= frame_dim:
            raise ValueError(f"latent_dim must be in [1, n_mels * frames_per_latent = {frame_dim}], got {latent_dim}")
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_dim:
                raise ValueError(f"{name} must have latent_dim={latent_dim} entries, got {len(stats)}")
        # The fitted part: latent = projection @ (stacked log-mel frame − center). Identity-like until fitted.
        self.projection = nn.Parameter(torch.eye(latent_dim, frame_dim), requires_grad=False)
        self.center = nn.Parameter(torch.zeros(frame_dim), requires_grad=False)
        bank = mel_filterbank(n_mels, n_fft, sampling_rate, f_min, f_max)
        self.register_buffer("mel_basis", bank, persistent=False)
        self.register_buffer("mel_inverse", torch.linalg.pinv(bank.double()).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # No waveform in [-1, 1] has an STFT magnitude above Σ window, so no mel band exceeds that times its filter's
        # weight: the decoder clamps log-mel values there, so that latents far off the data (a sampler diverging, a
        # guidance step too large) decode to a loud but finite waveform instead of exp(·) overflowing to NaN.
        self.register_buffer("log_mel_max", torch.log(self.window.sum() * bank.sum(-1).max() + log_floor), persistent=False)

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return self.config.stft_hop_length * self.config.frames_per_latent

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    # ------------------------------------------------------------------------------------------------ analysis
    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """`(batch, 1, samples)` → log-mel frames `(batch, n_mels, frames · frames_per_latent)`, where frames =
        ⌈samples / hop_length⌉ (the audio is right-padded with zeros to whole latent frames)."""
        if audio.ndim != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must have shape (batch, 1, samples), got {tuple(audio.shape)}")
        audio = nn.functional.pad(audio[:, 0].float(), (0, -audio.shape[-1] % self.hop_length))
        spec = torch.stft(audio, self.config.n_fft, self.config.stft_hop_length, window=self.window.to(audio.device),
                          center=True, pad_mode="constant", return_complex=True)
        stft_frames = audio.shape[-1] // self.config.stft_hop_length  # frame k is centred on sample k·hop
        return torch.log(self.mel_basis.to(audio.device) @ spec[..., :stft_frames].abs() + self.config.log_floor)

    def stack(self, log_mel: torch.Tensor) -> torch.Tensor:
        """`(batch, n_mels, frames · k)` → `(batch, frames, n_mels · k)`: k = frames_per_latent consecutive frames."""
        b, m, t = log_mel.shape
        k = self.config.frames_per_latent
        return log_mel.reshape(b, m, t // k, k).permute(0, 2, 3, 1).reshape(b, t // k, k * m)

    def unstack(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, _ = frames.shape
        k, m = self.config.frames_per_latent, self.config.n_mels
        return frames.reshape(b, t, k, m).permute(0, 3, 1, 2).reshape(b, m, t * k)

    def encode(self, audio: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """
        Args:
            audio (`torch.Tensor` of shape `(batch, 1, samples)`): waveform in [-1, 1]; right-padded with zeros to a
                multiple of `hop_length`.
        Returns:
            `AutoencoderKLOutput` whose `latent_dist` is a diagonal Gaussian of std 0 over `(batch, latent_dim, frames)`.
        """
        frames = self.stack(self.log_mel(audio)) - self.center
        z = (frames @ self.projection.T).transpose(1, 2)
        posterior = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], dim=1), deterministic=True)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    # ------------------------------------------------------------------------------------------------ synthesis
    def magnitudes(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `(batch, latent_dim, frames)` → linear STFT magnitudes `(batch, n_fft // 2 + 1, frames · k)`."""
        if z.ndim != 3 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"z must have shape (batch, {self.config.latent_dim}, frames), got {tuple(z.shape)}")
        log_mel = self.unstack(z.float().transpose(1, 2) @ self.projection + self.center)
        mel = (torch.minimum(log_mel, self.log_mel_max.to(log_mel.device)).exp() - self.config.log_floor).clamp(min=0.0)
        return (self.mel_inverse.to(z.device) @ mel).clamp(min=0.0)

    def griffin_lim(self, magnitudes: torch.Tensor) -> torch.Tensor:
        """Fast Griffin-Lim: a waveform whose STFT magnitudes approach `magnitudes` `(batch, bins, frames)`, from a
        fixed pseudo-random phase (so decoding is a deterministic function), `(batch, frames · stft_hop_length)`.

        Differentiable with respect to `magnitudes` with the phase held fixed: the phase is found without gradients
        and the final inverse STFT, linear in the magnitudes, carries them. Backpropagating through the phase
        iterations as well is chaotic (16 momentum steps, each dividing by |STFT|) and overflowed to NaN in
        loss-based guidance."""
        n_fft, hop, window = self.config.n_fft, self.config.stft_hop_length, self.window.to(magnitudes.device)
        length = magnitudes.shape[-1] * hop
        # One more frame (a copy of the last) so that the inverse STFT covers the last hop.
        magnitudes = torch.cat([magnitudes, magnitudes[..., -1:]], dim=-1)
        with torch.no_grad():
            target = magnitudes.detach()
            phase = torch.rand(target.shape[-2:], generator=torch.Generator().manual_seed(0)) * (2 * math.pi)
            unit = torch.polar(torch.ones_like(phase), phase).to(target.device)
            previous = torch.zeros_like(target, dtype=unit.dtype)
            momentum = self.config.griffin_lim_momentum
            for _ in range(self.config.griffin_lim_iters):
                audio = torch.istft(target * unit, n_fft, hop, window=window, center=True, length=length)
                rebuilt = torch.stft(audio, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
                accelerated = rebuilt + momentum * (rebuilt - previous) if momentum else rebuilt
                previous = rebuilt
                unit = accelerated / accelerated.abs().clamp(min=1e-8)
        return torch.istft(magnitudes * unit, n_fft, hop, window=window, center=True, length=length)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """
        Args:
            z (`torch.Tensor` of shape `(batch, latent_dim, frames)`): latent in the VAE's own (unstandardised) scale.
        Returns:
            `DecoderOutput` whose `sample` is `(batch, 1, frames * hop_length)`, float32.
        """
        audio = self.griffin_lim(self.magnitudes(z))[:, None]
        if not return_dict:
            return (audio,)
        return DecoderOutput(sample=audio)

    def forward(self, audio: torch.Tensor, sample_posterior: bool = False, generator=None) -> DecoderOutput:
        return DecoderOutput(sample=self.decode(self.encode(audio).latent_dist.mode()).sample[..., : audio.shape[-1]])
