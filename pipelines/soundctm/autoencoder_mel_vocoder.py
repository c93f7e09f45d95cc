"""A waveform ↔ latent autoencoder made of a mel front end, an image VAE over the log-mel spectrogram and a vocoder:
the 16 kHz system of the SoundCTM paper (SoundCTM-UNet, after TANGO and AudioLDM).

    encode: waveform → |STFT| (periodic Hann, `n_fft`, `stft_hop_length`, centred with reflection)
            → Slaney mel filterbank (`n_mels` bands, `f_min`..`f_max`) → log(max(·, `log_floor`))
            → a `(batch, 1, frames, n_mels)` image → diffusers' `AutoencoderKL` (`self.vae`) → latent
              `(batch, latent_dim, frames / r, n_mels / r)`, r = 2^(levels − 1) of the VAE
    decode: latent → `AutoencoderKL` decoder → log-mel image → HiFi-GAN (`self.vocoder`, transformers'
            `SpeechT5HifiGan`) → waveform, cut to `frames · stft_hop_length` samples

The mel front end is AudioLDM's (its `TacotronSTFT`, which TANGO and SoundCTM-UNet reuse): its defaults here are
AudioLDM's 16 kHz settings, and the filterbank is librosa's default one (`librosa.filters.mel`, Slaney scale and
Slaney area normalisation), computed here from its formula. AudioLDM and TANGO also peak-normalise every clip to 0.5
before this front end (data preparation, not part of the autoencoder: a caller that encodes training data for such a
teacher does the same).

The latent statistics used by the diffusion model live in the config, as for the other autoencoders of this package:
`z_norm = (z - latents_mean) / latents_std * scaling_factor`, per latent channel.

This file imports only torch, numpy, diffusers, transformers and its sibling `latent_statistics.py`, so that
diffusers' dynamic loader can load it.
"""

import inspect

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL, AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from .latent_statistics import LatentStatisticsMixin

_VOCODER_KEYS = tuple(
    name for name, p in inspect.signature(SpeechT5HifiGanConfig.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY
)


def hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (the Auditory Toolbox, librosa's default): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, log_step = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    log_part = min_log_hz / f_sp + np.log(np.maximum(f, min_log_hz) / min_log_hz) / log_step
    return np.where(f >= min_log_hz, log_part, f / f_sp)


def mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, log_step = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(log_step * (m - min_log_mel)), f_sp * m)


def slaney_mel_filterbank(n_mels: int, n_fft: int, sampling_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """`(n_mels, n_fft // 2 + 1)` triangular filters with edges equally spaced on the Slaney mel scale, each scaled
    by 2 / (its bandwidth in Hz) (constant energy per band): librosa's `filters.mel(htk=False, norm="slaney")`."""
    freqs = np.linspace(0.0, sampling_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return torch.from_numpy(bank).float()


class AutoencoderMelVocoder(LatentStatisticsMixin, ModelMixin, ConfigMixin):
    """
    Log-mel VAE plus vocoder, mono: `encode(audio).latent_dist` over `(batch, latent_dim, frames, mel_bins)` latents
    and `decode(z).sample` = waveform, as the other autoencoders of this package.

    Args:
        vae_config (`dict`): the arguments of diffusers' `AutoencoderKL` over log-mel images (`in_channels` and
            `out_channels` 1, `latent_channels` = `latent_dim`). Required.
        vocoder_config (`dict`): the arguments of transformers' `SpeechT5HifiGanConfig` (`model_in_dim` = `n_mels`,
            the product of `upsample_rates` = `stft_hop_length`). Required.
        sampling_rate (`int`, defaults to 16000).
        n_fft (`int`, defaults to 1024), stft_hop_length (`int`, defaults to 160), win_length (`int`, defaults to
            1024): the STFT (periodic Hann window of `win_length`, centred in `n_fft`).
        n_mels (`int`, defaults to 64), f_min (`float`, defaults to 0), f_max (`float`, defaults to 8000): the mel
            filterbank.
        log_floor (`float`, defaults to 1e-5): mel magnitudes are clamped to at least this before the log.
        latent_dim (`int`, defaults to 8): latent channels.
        latents_mean, latents_std (`list[float]`, *optional*): per-channel latent statistics; `None` means 0 and 1.
        scaling_factor (`float`, defaults to 1.0): standardised latents are multiplied by this.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        vae_config: dict | None = None,
        vocoder_config: dict | None = None,
        sampling_rate: int = 16000,
        n_fft: int = 1024,
        stft_hop_length: int = 160,
        win_length: int = 1024,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        log_floor: float = 1e-5,
        latent_dim: int = 8,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        if not isinstance(vae_config, dict) or not isinstance(vocoder_config, dict):
            raise ValueError(
                "vae_config (AutoencoderKL arguments) and vocoder_config (SpeechT5HifiGanConfig arguments) are required "
                "dicts; hub/audioldm_checkpoint.py has AudioLDM-S's"
            )
        if not 0 <= f_min < f_max <= sampling_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sampling_rate / 2, got f_min={f_min}, f_max={f_max}")
        if not 0 < stft_hop_length <= win_length <= n_fft:
            raise ValueError(f"need 0 < stft_hop_length <= win_length <= n_fft, got {stft_hop_length}, {win_length}, {n_fft}")
        if log_floor <= 0:
            raise ValueError(f"log_floor must be > 0, got {log_floor}")
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_dim:
                raise ValueError(f"{name} must have latent_dim={latent_dim} entries, got {len(stats)}")
        if latents_std is not None and not all(s > 0 for s in latents_std):
            raise ValueError("latents_std must be positive")

        if vae_config.get("in_channels", 3) != 1 or vae_config.get("out_channels", 3) != 1:
            raise ValueError("vae_config must have in_channels=1 and out_channels=1 (one log-mel image)")
        if vae_config.get("latent_channels") != latent_dim:
            raise ValueError(f"vae_config['latent_channels'] ({vae_config.get('latent_channels')}) must equal latent_dim ({latent_dim})")
        self.vae = AutoencoderKL(**vae_config)
        self.downsampling = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if n_mels % self.downsampling:
            raise ValueError(f"n_mels ({n_mels}) must be a multiple of the VAE's downsampling factor {self.downsampling}")

        unknown = sorted(set(vocoder_config) - set(_VOCODER_KEYS))
        if unknown:
            raise ValueError(f"vocoder_config has {unknown}, not arguments of SpeechT5HifiGanConfig ({list(_VOCODER_KEYS)})")
        hifigan_config = SpeechT5HifiGanConfig(**vocoder_config)
        if hifigan_config.model_in_dim != n_mels:
            raise ValueError(f"vocoder_config['model_in_dim'] ({hifigan_config.model_in_dim}) must equal n_mels ({n_mels})")
        if int(np.prod(hifigan_config.upsample_rates)) != stft_hop_length:
            raise ValueError(
                f"the vocoder's upsample_rates {list(hifigan_config.upsample_rates)} must multiply to stft_hop_length "
                f"({stft_hop_length}): one mel frame is one hop of samples"
            )
        if hifigan_config.sampling_rate != sampling_rate:
            raise ValueError(f"vocoder_config['sampling_rate'] ({hifigan_config.sampling_rate}) != sampling_rate ({sampling_rate})")
        self.vocoder = SpeechT5HifiGan(hifigan_config)

        # The front end's constants stay float32 whatever dtype the networks are cast to: plain attributes, not
        # buffers (they follow from the config, so they are not saved either).
        window = torch.hann_window(win_length, periodic=True)
        self._window = nn.functional.pad(window, ((n_fft - win_length) // 2, n_fft - win_length - (n_fft - win_length) // 2))
        self._mel_basis = slaney_mel_filterbank(n_mels, n_fft, sampling_rate, f_min, f_max)

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame: the STFT hop times the VAE's downsampling along time."""
        return self.config.stft_hop_length * self.downsampling

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def mel_basis(self) -> torch.Tensor:
        """The mel filterbank, `(n_mels, n_fft // 2 + 1)`, float32."""
        return self._mel_basis

    @property
    def latent_mel_bins(self) -> int:
        """Size of the latent's last (frequency) dimension."""
        return self.config.n_mels // self.downsampling

    # ------------------------------------------------------------------------------------------------ analysis
    def mel_spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """`(batch, 1, samples)` in [-1, 1] (clamped there, as AudioLDM does) → log-mel image
        `(batch, 1, samples // stft_hop_length, n_mels)`, float32. STFT frame k is centred on sample k·hop; the frame
        centred just past the end is dropped, as AudioLDM crops its spectrograms to `samples / hop` frames."""
        if audio.ndim != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must have shape (batch, 1, samples), got {tuple(audio.shape)}")
        hop, n_fft = self.config.stft_hop_length, self.config.n_fft
        if audio.shape[-1] < max(hop, n_fft // 2 + 1):
            raise ValueError(f"audio must have at least {max(hop, n_fft // 2 + 1)} samples, got {audio.shape[-1]}")
        audio = audio[:, 0].float().clamp(-1.0, 1.0)
        spec = torch.stft(audio, n_fft, hop, window=self._window.to(audio.device), center=True, pad_mode="reflect",
                          return_complex=True)  # fmt: skip
        magnitudes = spec[..., : audio.shape[-1] // hop].abs()
        mel = torch.matmul(self._mel_basis.to(audio.device), magnitudes)
        return torch.log(mel.clamp(min=self.config.log_floor)).transpose(1, 2)[:, None]

    def encode(self, audio: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """
        Args:
            audio (`torch.Tensor` of shape `(batch, 1, samples)`): mono waveform in [-1, 1]; right-padded with zeros
                to a multiple of `hop_length`.
        Returns:
            `AutoencoderKLOutput` whose `latent_dist` is the VAE's diagonal Gaussian over
            `(batch, latent_dim, samples / hop_length, latent_mel_bins)`.
        """
        if audio.ndim != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must have shape (batch, 1, samples), got {tuple(audio.shape)}")
        audio = nn.functional.pad(audio, (0, -audio.shape[-1] % self.hop_length))
        mel = self.mel_spectrogram(audio)
        return self.vae.encode(mel.to(self.vae.dtype), return_dict=return_dict)

    # ------------------------------------------------------------------------------------------------ synthesis
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel image `(batch, 1, frames, n_mels)` → waveform `(batch, 1, frames · stft_hop_length)`. HiFi-GAN's
        transposed convolutions give a few samples more than that (32 for AudioLDM's); they are cut."""
        frames = mel.shape[2]
        audio = self.vocoder(mel[:, 0].to(self.vocoder.dtype))
        return audio[:, None, : frames * self.config.stft_hop_length]

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """
        Args:
            z (`torch.Tensor` of shape `(batch, latent_dim, frames, latent_mel_bins)`): latent in the VAE's own
                (unstandardised) scale.
        Returns:
            `DecoderOutput` whose `sample` is `(batch, 1, frames * hop_length)`, float32; differentiable in `z`.
        """
        if z.ndim != 4 or z.shape[1] != self.config.latent_dim or z.shape[3] != self.latent_mel_bins:
            raise ValueError(
                f"z must have shape (batch, {self.config.latent_dim}, frames, {self.latent_mel_bins}), got {tuple(z.shape)}"
            )
        mel = self.vae.decode(z.to(self.vae.dtype)).sample
        audio = self.vocode(mel).float()
        if not return_dict:
            return (audio,)
        return DecoderOutput(sample=audio)

    def forward(self, audio: torch.Tensor, sample_posterior: bool = False, generator=None) -> DecoderOutput:
        posterior = self.encode(audio).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return DecoderOutput(sample=self.decode(z).sample[..., : audio.shape[-1]])
