"""Stable Audio Open's stereo VAE for SoundCTM: diffusers' `AutoencoderOobleck` with its weights as they are, plus the
interface that `SoundCTMPipeline` and `distill/train.py` use of every autoencoder of this package (`encode`,
`decode`, `hop_length` and `sampling_rate` are the parent's): the latent statistics in the config (`latent_dim`, `latents_mean`, `latents_std`, `scaling_factor` = σ_d). Stable Audio Open's teacher works on
the raw latents with σ_d 1, so the defaults standardise nothing.

A folder saved by diffusers as `AutoencoderOobleck` (e.g. the `vae/` of `stabilityai/stable-audio-open-1.0`) loads
into this class unchanged: `AutoencoderOobleckSoundCTM.from_pretrained(repo, subfolder="vae")`.

This file imports only torch, diffusers and its sibling `latent_statistics.py`, so that diffusers' dynamic loader can
load it.
"""

from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_oobleck import AutoencoderOobleck
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers' loader looks its base class up in this module

from .latent_statistics import LatentStatisticsMixin


class AutoencoderOobleckSoundCTM(LatentStatisticsMixin, AutoencoderOobleck):
    r"""
    `AutoencoderOobleck` (all of its arguments) with:

    Parameters:
        latent_dim (`int`, *optional*): the latent channels, `decoder_input_channels` (filled in when not given, so
            that a folder saved as a plain `AutoencoderOobleck` loads).
        latents_mean, latents_std (`list[float]`, *optional*): per-channel statistics (None: 0 and 1).
        scaling_factor (`float`, defaults to 1.0): σ_d of the diffusion model trained on these latents.
    """

    @register_to_config
    def __init__(
        self,
        encoder_hidden_size: int = 128,
        downsampling_ratios: list = [2, 4, 4, 8, 8],
        channel_multiples: list = [1, 2, 4, 8, 16],
        decoder_channels: int = 128,
        decoder_input_channels: int = 64,
        audio_channels: int = 2,
        sampling_rate: int = 44100,
        latent_dim: int | None = None,
        latents_mean: list | None = None,
        latents_std: list | None = None,
        scaling_factor: float = 1.0,
    ):
        if encoder_hidden_size != 2 * decoder_input_channels:  # the encoder outputs the posterior's mean and scale
            raise ValueError(
                f"encoder_hidden_size ({encoder_hidden_size}) must be 2 × decoder_input_channels ({decoder_input_channels})"
            )
        if latent_dim is not None and latent_dim != decoder_input_channels:
            raise ValueError(f"latent_dim ({latent_dim}) must equal decoder_input_channels ({decoder_input_channels})")
        latent_dim = decoder_input_channels
        for name, stats in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if stats is not None and len(stats) != latent_dim:
                raise ValueError(f"{name} must have latent_dim={latent_dim} values, got {len(stats)}")
        super().__init__(
            encoder_hidden_size=encoder_hidden_size,
            downsampling_ratios=downsampling_ratios,
            channel_multiples=channel_multiples,
            decoder_channels=decoder_channels,
            decoder_input_channels=decoder_input_channels,
            audio_channels=audio_channels,
            sampling_rate=sampling_rate,
        )
        self.register_to_config(latent_dim=latent_dim)
        # `hop_length` (the product of the downsampling ratios, 2048 for Stable Audio Open) is the parent's own.
