"""The latent standardisation every autoencoder of this package shares: its statistics live in the model's config
(`latent_dim`, `latents_mean`, `latents_std`, `scaling_factor` = σ_d), training standardises
`z_norm = (z - latents_mean) / latents_std * scaling_factor` and the pipeline inverts it before decoding. The
statistics are per channel (dim 1) and broadcast over every other dimension: `(B, C, T)` latents of a waveform VAE,
`(B, C, T, F)` latents of a mel-spectrogram VAE.

This file imports only torch so that diffusers' dynamic loader can copy it beside an autoencoder's file.
"""

import torch


class LatentStatisticsMixin:
    """`standardize` / `unstandardize` from the config of a `ConfigMixin` model; `None` statistics mean 0 and 1."""

    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config.latent_dim
        if z.ndim < 3 or z.shape[1] != c:
            raise ValueError(f"latents must have shape (batch, latent_dim={c}, ...), got {tuple(z.shape)}")
        mean = torch.zeros(c) if self.config.latents_mean is None else torch.tensor(self.config.latents_mean)
        std = torch.ones(c) if self.config.latents_std is None else torch.tensor(self.config.latents_std)
        shape = (1, c) + (1,) * (z.ndim - 2)
        return mean.to(z).reshape(shape), std.to(z).reshape(shape)

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent → the diffusion model's space: (z − mean) / std · scaling_factor."""
        mean, std = self._latent_stats(z)
        return (z - mean) / std * self.config.scaling_factor

    def unstandardize(self, z_norm: torch.Tensor) -> torch.Tensor:
        """The diffusion model's space → VAE latent: z_norm · std / scaling_factor + mean."""
        mean, std = self._latent_stats(z_norm)
        return z_norm * std / self.config.scaling_factor + mean
