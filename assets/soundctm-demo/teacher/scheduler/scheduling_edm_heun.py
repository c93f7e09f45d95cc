"""Deterministic EDM Heun sampler (Karras et al. 2022, Algorithm 1) as a diffusers scheduler.

This is how the SoundCTM teacher is sampled (the paper's "teacher, 40 steps" baselines) and the solver
that distillation runs from t to u. The network returns the raw output F; the denoiser is
D(z, t) = c_skip(t)·z + c_out(t)·F, and the ODE is dz/dt = (z − D)/t.

Each of the N steps takes an Euler step t_i → t_{i+1} and, unless t_{i+1} = 0, a second-order correction
evaluated at t_{i+1}: 2N − 1 network evaluations in all. `timesteps` lists the model time c_noise(t) of
every evaluation in order, so a pipeline runs the same loop as for the CTM student.

This file only imports torch, numpy, diffusers and its sibling `edm_preconditioning.py` so that diffusers' dynamic
loader can load it.
"""

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from .edm_preconditioning import EDMPreconditioningMixin, check_preconditioning


@dataclass
class EDMHeunSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor`): the sample to feed the next network evaluation (the Euler predictor after a
            first-order call, z_{t_{i+1}} after a correction).
        pred_original_sample (`torch.Tensor`): the denoiser output D(z, t) at this evaluation.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class EDMHeunScheduler(EDMPreconditioningMixin, SchedulerMixin, ConfigMixin):
    """
    EDM's deterministic Heun sampler on the Karras grid of N noise levels followed by 0.

    Args:
        sigma_min (`float`, defaults to 0.002), sigma_max (`float`, defaults to 80.0): ends of the grid.
        sigma_data (`float`, defaults to 0.5): σ_d of the EDM preconditioning.
        rho (`float`, defaults to 7.0): exponent of the Karras grid.
        prediction_type (`str`, defaults to `"epsilon"`), noise_conditioning (`str`, defaults to `"edm"`): the
            teacher network's c_out sign and time input, as in `CTMScheduler` (`edm_preconditioning.py`).
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        rho: float = 7.0,
        prediction_type: str = "epsilon",
        noise_conditioning: str = "edm",
    ):
        check_preconditioning(prediction_type, noise_conditioning)
        if not 0.0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.init_noise_sigma = sigma_max
        self.num_inference_steps = None
        self.sigmas = None
        self.timesteps = None
        self._eval_sigmas = None
        self._step_index = None
        self._x_cur = None
        self._d_cur = None

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
        return self._step_index

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        sigma_max: float | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            num_inference_steps (`int`): N, the number of Heun steps (2N − 1 network evaluations), ≥ 1.
            sigma_max (`float`, *optional*): start below the config's `sigma_max` (audio-to-audio).
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if sigma_max is not None and not self.config.sigma_min < sigma_max <= self.config.sigma_max:
            raise ValueError(
                f"sigma_max must be in ({self.config.sigma_min}, {self.config.sigma_max}], got {sigma_max}"
            )
        sigmas = np.append(self.karras_sigmas(num_inference_steps, sigma_max), 0.0)  # t_0 .. t_{N-1}, t_N = 0
        # Evaluation points: t_i for the Euler step, then t_{i+1} for the correction unless t_{i+1} = 0.
        eval_sigmas = [sigmas[0]]
        for i in range(1, num_inference_steps):
            eval_sigmas += [sigmas[i], sigmas[i]]
        eval_sigmas = np.asarray(eval_sigmas)

        self.num_inference_steps = int(num_inference_steps)
        self.init_noise_sigma = float(sigmas[0])
        self.sigmas = torch.from_numpy(sigmas).to(device=device, dtype=torch.float32)
        self._eval_sigmas = torch.from_numpy(eval_sigmas).to(device=device, dtype=torch.float32)
        self.timesteps = self.sigma_to_timestep(torch.from_numpy(eval_sigmas)).to(device=device, dtype=torch.float32)
        self._step_index = 0
        self._x_cur = self._d_cur = None

    @property
    def state_in_first_order(self) -> bool:
        return self._x_cur is None

    def _current_sigma(self):
        if self._step_index is None:
            raise RuntimeError("call `set_timesteps` before `scale_model_input` / `step`")
        if self._step_index >= len(self._eval_sigmas):
            raise RuntimeError("all steps were already taken; call `set_timesteps` again")
        return self._eval_sigmas[self._step_index]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """c_in(σ) · sample at the current evaluation point."""
        return sample * self.c_in(self._current_sigma()).to(sample.dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator=None,
        return_dict: bool = True,
    ) -> EDMHeunSchedulerOutput | tuple:
        """Takes the Euler step (first call of a step) or the Heun correction (second call)."""
        sigma = self._current_sigma()
        compute_dtype = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        z = sample.to(compute_dtype)
        denoised = self.c_skip(sigma) * z + self.c_out(sigma) * model_output.to(compute_dtype)
        d = (z - denoised) / sigma

        if self.state_in_first_order:
            # Euler step t_i -> t_{i+1}.
            i = (self._step_index + 1) // 2
            t_cur, t_next = self.sigmas[i], self.sigmas[i + 1]
            prev_sample = z + (t_next - t_cur) * d
            if t_next > 0:
                self._x_cur, self._d_cur, self._t_cur = z, d, t_cur
        else:
            # Apply 2nd order correction.
            t_next = sigma
            prev_sample = self._x_cur + (t_next - self._t_cur) * (0.5 * self._d_cur + 0.5 * d)
            self._x_cur = self._d_cur = None

        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        if not return_dict:
            return (prev_sample, denoised.to(sample.dtype))
        return EDMHeunSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised.to(sample.dtype))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        """z_σ = x_0 + σ·ε."""
        sigma = torch.as_tensor(sigma, device=original_samples.device, dtype=original_samples.dtype)
        while sigma.ndim < original_samples.ndim:
            sigma = sigma.unsqueeze(-1)
        return original_samples + sigma * noise

    def __len__(self):
        return len(self.timesteps) if self.timesteps is not None else 0
