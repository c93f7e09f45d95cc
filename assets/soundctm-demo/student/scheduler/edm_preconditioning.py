"""EDM preconditioning (Karras et al. 2022, Table 1) shared by the CTM and EDM Heun schedulers, for the teacher
families this package distils:

    D(z; σ) = c_skip(σ)·z + c_out(σ)·F(c_in(σ)·z, c_noise(σ)),   c_in = 1/√(σ² + σ_d²),   c_skip = σ_d²/(σ² + σ_d²),
    c_out   = ±σ·σ_d/√(σ² + σ_d²)   (+ for EDM's F, `prediction_type="epsilon"` as diffusers names it; − for a
                                      v-predicting network, `"v_prediction"`, e.g. Stable Audio Open),
    c_noise = ln(σ)/4               (`noise_conditioning="edm"`: SoundCTM's DiT and UNet)
            or atan(σ)·2/π          (`"atan"`: Stable Audio Open).

This file imports only torch and math so that diffusers' dynamic loader can copy it beside a scheduler's file.
"""

import math

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")
NOISE_CONDITIONINGS = ("edm", "atan")


def check_preconditioning(prediction_type: str, noise_conditioning: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if noise_conditioning not in NOISE_CONDITIONINGS:
        raise ValueError(f"noise_conditioning must be one of {NOISE_CONDITIONINGS}, got {noise_conditioning!r}")


class EDMPreconditioningMixin:
    """c_in, c_skip, c_out and c_noise (`sigma_to_timestep`) from a scheduler config's `sigma_data`,
    `prediction_type` and `noise_conditioning` (a config saved without the last two is EDM's: "epsilon", "edm")."""

    def c_in(self, sigma):
        return 1.0 / (sigma**2 + self.config.sigma_data**2) ** 0.5

    def c_skip(self, sigma):
        return self.config.sigma_data**2 / (sigma**2 + self.config.sigma_data**2)

    def c_out(self, sigma):
        sign = -1.0 if self.config.get("prediction_type", "epsilon") == "v_prediction" else 1.0
        return sign * sigma * self.config.sigma_data / (sigma**2 + self.config.sigma_data**2) ** 0.5

    def sigma_to_timestep(self, sigma):
        """c_noise(σ): the model's time input (a tensor for a tensor, a float for a number)."""
        if self.config.get("noise_conditioning", "edm") == "atan":
            return torch.atan(sigma) * (2 / math.pi) if isinstance(sigma, torch.Tensor) else math.atan(sigma) * 2 / math.pi
        return torch.log(sigma) / 4 if isinstance(sigma, torch.Tensor) else math.log(sigma) / 4
