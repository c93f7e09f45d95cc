"""CTM γ-sampling scheduler (Kim et al. 2024, Algorithm 1; SoundCTM, Saito et al. 2025).

The student network G(z_t, t, s) jumps from noise level t to any s ≤ t along the teacher's
probability-flow ODE. Multistep sampling walks the Karras grid t_0 > ... > t_N = sigma_min:

    s_n     = sqrt(1 - γ²) · (t_{n+1} - sigma_min) + sigma_min        (jump target)
    g       = c_skip(t_n) · z + c_out(t_n) · F                         (EDM denoiser, F = raw network output)
    G       = (s_n / t_n) · z + (1 - s_n / t_n) · g                    (CTM jump t_n → s_n)
    z_{n+1} = G + sqrt(t_{n+1}² - s_n²) · ε                            (γ re-noising, never after the last jump)

γ = 0 is deterministic (s_n = t_{n+1}, no noise drawn at all); γ = 1 is consistency-model multistep
sampling (every jump lands on sigma_min, then re-noises).

This file only imports torch, numpy, diffusers and its sibling `edm_preconditioning.py` so that diffusers'
dynamic loader can load it from a pipeline folder or a Hub repo.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .edm_preconditioning import EDMPreconditioningMixin, check_preconditioning


@dataclass
class CTMSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor` of shape `(batch, channels, frames)`):
            z_{n+1}, the sample at the next grid point: the CTM jump G, re-noised when γ > 0.
        pred_original_sample (`torch.Tensor` of shape `(batch, channels, frames)`):
            g, the EDM denoiser's estimate of the clean latent at the current noise level.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class CTMScheduler(EDMPreconditioningMixin, SchedulerMixin, ConfigMixin):
    """
    Consistency Trajectory Model scheduler with γ-sampling, in the EDM parameterisation used by SoundCTM.

    Args:
        sigma_min (`float`, defaults to 0.002): smallest noise level; the last jump lands here.
        sigma_max (`float`, defaults to 80.0): noise level of the initial latent (`init_noise_sigma`).
        sigma_data (`float`, defaults to 0.5): standard deviation of the (standardised) data, σ_d.
        rho (`float`, defaults to 7.0): exponent of the Karras grid.
        gamma (`float`, defaults to 0.0): default stochasticity γ ∈ [0, 1] used by `set_timesteps`.
        prediction_type (`str`, defaults to `"epsilon"`): the sign of c_out, as the teacher's network was trained:
            `"epsilon"` (EDM's F, SoundCTM's models) or `"v_prediction"` (Stable Audio Open).
        noise_conditioning (`str`, defaults to `"edm"`): the model's time input c_noise(σ): `"edm"` = ln(σ)/4,
            `"atan"` = atan(σ)·2/π (Stable Audio Open). See `edm_preconditioning.py`.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        rho: float = 7.0,
        gamma: float = 0.0,
        prediction_type: str = "epsilon",
        noise_conditioning: str = "edm",
    ):
        check_preconditioning(prediction_type, noise_conditioning)
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        _check_gamma(gamma)
        self.init_noise_sigma = sigma_max
        self.num_inference_steps = None
        self.gamma = gamma
        self.sigmas = None
        self.target_sigmas = None
        self.timesteps = None
        self.target_timesteps = None
        self._step_index = None
        self._begin_index = None

    def karras_sigmas(self, num_points: int, sigma_max: float | None = None) -> np.ndarray:
        """`num_points` noise levels from `sigma_max` down to `sigma_min` (Karras et al. 2022, Eq. 5), float64."""
        sigma_max = self.config.sigma_max if sigma_max is None else sigma_max
        rho = self.config.rho
        ramp = np.linspace(0.0, 1.0, num_points) if num_points > 1 else np.zeros(1)
        max_inv_rho = sigma_max ** (1 / rho)
        min_inv_rho = self.config.sigma_min ** (1 / rho)
        return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho

    @property
    def step_index(self) -> int | None:
        """Index of the jump that the next `step` call performs."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling at grid point `begin_index` instead of t_0 (e.g. for audio-to-audio)."""
        if self.num_inference_steps is not None and not 0 <= begin_index < self.num_inference_steps:
            raise ValueError(f"begin_index must be in [0, {self.num_inference_steps}), got {begin_index}")
        self._begin_index = begin_index
        self._step_index = begin_index

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        gamma: float | None = None,
        sigma_max: float | None = None,
    ) -> None:
        """
        Builds the grid t_0..t_N (N + 1 Karras points from `sigma_max` to `sigma_min`) and the N jump targets.

        Args:
            num_inference_steps (`int`): N, the number of jumps (network evaluations), ≥ 1.
            device: where `sigmas`, `timesteps` etc. are placed.
            gamma (`float`, *optional*): γ ∈ [0, 1]; defaults to the config's `gamma`.
            sigma_max (`float`, *optional*): start the grid below the config's `sigma_max` (audio-to-audio).
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        gamma = self.config.gamma if gamma is None else gamma
        _check_gamma(gamma)
        if sigma_max is not None and not self.config.sigma_min < sigma_max <= self.config.sigma_max:
            raise ValueError(
                f"sigma_max must be in ({self.config.sigma_min}, {self.config.sigma_max}], got {sigma_max}"
            )

        sigma_min = self.config.sigma_min
        sigmas = self.karras_sigmas(num_inference_steps + 1, sigma_max)
        target_sigmas = math.sqrt(1.0 - gamma**2) * (sigmas[1:] - sigma_min) + sigma_min

        self.num_inference_steps = int(num_inference_steps)
        self.gamma = float(gamma)
        self.init_noise_sigma = float(sigmas[0])
        self.sigmas = torch.from_numpy(sigmas).to(device=device, dtype=torch.float32)
        self.target_sigmas = torch.from_numpy(target_sigmas).to(device=device, dtype=torch.float32)
        self.timesteps = self.sigma_to_timestep(torch.from_numpy(sigmas[:-1])).to(device=device, dtype=torch.float32)
        self.target_timesteps = self.sigma_to_timestep(torch.from_numpy(target_sigmas)).to(device=device, dtype=torch.float32)
        self._step_index = 0
        self._begin_index = None

    def _current_index(self) -> int:
        if self._step_index is None:
            raise RuntimeError("call `set_timesteps` before `scale_model_input` / `step`")
        if self._step_index >= self.num_inference_steps:
            raise RuntimeError(
                f"all {self.num_inference_steps} jumps were already taken; call `set_timesteps` again"
            )
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """c_in(t_n) · sample, for the current grid point t_n."""
        sigma = self.sigmas[self._current_index()]
        return sample * self.c_in(sigma).to(sample.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor | None,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> CTMSchedulerOutput | tuple:
        """
        One CTM jump t_n → s_n, then γ re-noising up to t_{n+1}.

        Args:
            model_output (`torch.Tensor`): F, the raw network output at (t_n, s_n) (already ν-combined).
            timestep: the current model timestep (unused: the scheduler tracks its own index).
            sample (`torch.Tensor`): z_{t_n}.
            generator: source of the re-noising ε when γ > 0 (a list gives one per batch item).
        """
        n = self._current_index()
        t = self.sigmas[n]
        s = self.target_sigmas[n]
        t_next = self.sigmas[n + 1]
        compute_dtype = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        z = sample.to(compute_dtype)
        F = model_output.to(compute_dtype)

        g = self.c_skip(t) * z + self.c_out(t) * F  # EDM denoiser D(z_t, t)
        G = (s / t) * z + (1.0 - s / t) * g  # CTM jump to s (Kim et al. 2024, Lemma 1)
        prev_sample = G
        is_last = n == self.num_inference_steps - 1
        if self.gamma > 0 and not is_last:
            noise = randn_tensor(G.shape, generator=generator, device=G.device, dtype=G.dtype)
            prev_sample = G + torch.sqrt(t_next**2 - s**2) * noise

        self._step_index = n + 1
        prev_sample = prev_sample.to(sample.dtype)
        g = g.to(sample.dtype)
        if not return_dict:
            return (prev_sample, g)
        return CTMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=g)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """z_σ = x_0 + σ·ε (the variance-exploding forward process)."""
        sigma = torch.as_tensor(sigma, device=original_samples.device, dtype=original_samples.dtype)
        while sigma.ndim < original_samples.ndim:
            sigma = sigma.unsqueeze(-1)
        return original_samples + sigma * noise

    def __len__(self):
        return self.num_inference_steps or 0


def _check_gamma(gamma):
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)) or not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
