"""SoundCTM with training-free control by a differentiable loss on the generated sound (Saito et al., ICLR 2025, Section
4.3, Algorithm 3 and Appendix D.3), and the DITTO-2 baseline the paper compares it with (Novack et al., 2024a).

Loss-based guidance (Algorithm 3), at every jump n = 0..N−1:

    z_{s_n}      = ν·G_θ(z_{t_n}, c, ω, t_n, s_n) + (1 − ν)·G_θ(z_{t_n}, ∅, ω, t_n, s_n)     (lines 3–5)
    z_{t_N|t_n}  = G_θ(z_{t_n}, c, ω, t_n, σ_min)                                         (line 6)
    ŷ            = f(D(z_{t_N|t_n}))                                                        (line 7)
    z_{s_n}     ← z_{s_n} − ρ_{t_n}·∇_{z_{t_n}} L(ŷ, y_condition),  ρ_{t_n} = ρ / RMS(∇)    (line 8)
    z_{t_{n+1}}  = z_{s_n} + sqrt(t_{n+1}² − s_n²)·ε                                        (line 9, γ > 0)

The step size follows DITTO's use of the overall gradient norm: each jump moves the latent by ρ (RMS per element, in
the standardised latent space whose data std is σ_d) along the normalised gradient, whatever the loss's scale.

DITTO-2 (Appendix D.3): optimise the initial noise z_T with Adam through 1-step generations (ν = 1), 70 iterations at
learning rate 1.0 (in units of z_T = σ_max·ε), then sample with the usual N steps from the optimised noise.

The first loss is sound intensity (`intensity.py`): f = Savitzky–Golay-smoothed frame-wise dB RMS, L = MSE in dB
against a preset or user curve. Any `loss_fn(audio (batch, channels, samples)) -> (batch,)` works.

Loading (this file, or a saved folder of this pipeline, brings its sibling modules along):

    DiffusionPipeline.from_pretrained(student_folder, custom_pipeline="pipelines/soundctm/pipeline_soundctm_guidance.py",
                                      trust_remote_code=True)
    SoundCTMGuidancePipeline.from_pipe(soundctm_pipeline)
"""

from typing import Callable

import torch
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils import logging

from . import pipeline as soundctm_pipeline
from .guidance import check_number, ctm_jump, decode_waveform, normalized_gradient, step_end_correction
from .intensity import DEFAULT_RANGE_DB, intensity_loss
from .pipeline import OUTPUT_TYPES  # noqa: F401  (a `from .pipeline import` line makes diffusers' loader copy pipeline.py)

logger = logging.get_logger(__name__)

DEFAULT_RHO = 0.1
GUIDED_STEPS = 16  # the paper's Table 5 samples every method with 16 steps
DITTO2_ITERATIONS = 70
DITTO2_LEARNING_RATE = 1.0


class SoundCTMGuidancePipeline(soundctm_pipeline.SoundCTMPipeline):
    r"""
    Text-to-sound with a SoundCTM student, steered at every jump by the gradient of a loss on the decoded clean
    estimate (Algorithm 3), optionally from DITTO-2-optimised initial noise. Same components as `SoundCTMPipeline`.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        nu: float = 1.0,
        gamma: float = 0.0,
        audio_length_in_s: float | None = None,
        num_waveforms_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        intensity_curve=None,
        intensity_range_db: tuple[float, float] = DEFAULT_RANGE_DB,
        loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rho: float = DEFAULT_RHO,
        noise_optimization_steps: int = 0,
        noise_learning_rate: float = DITTO2_LEARNING_RATE,
    ) -> AudioPipelineOutput | tuple:
        r"""
        Generates sound from text under a loss. The arguments of `SoundCTMPipeline.__call__`, plus:

        Args:
            intensity_curve (`str` or list of `float`, *optional*): target loudness y_condition: a preset of
                `intensity.INTENSITY_PRESETS` ("flat", "rising", "falling", "swell", "dip", "pulses", "steps") spanning
                `intensity_range_db`, or at least 2 dB values (full scale, ≤ 0) spread evenly over the clip.
            intensity_range_db (`(float, float)`, defaults to (-40, -15)): the (low, high) dB a preset spans.
            loss_fn (`Callable`, *optional*): instead of an intensity curve, any differentiable
                `loss_fn(audio (batch, channels, samples) float32 at vae.config.sampling_rate) -> (batch,)` losses.
            rho (`float`, defaults to 0.1): ρ, the loss-guidance step per jump (RMS of the latent update). 0 turns
                loss-based guidance off.
            noise_optimization_steps (`int`, defaults to 0): DITTO-2: Adam iterations on the initial noise through
                1-step generations before sampling (the paper uses 70 with `rho=0`). 0 turns it off.
            noise_learning_rate (`float`, defaults to 1.0): DITTO-2's Adam learning rate, in units of z_T = σ_max·ε.

        `num_inference_steps` defaults to 16 (the paper's setting) when a loss is applied. With no loss, or `rho=0`
        and `noise_optimization_steps=0`, the result equals `SoundCTMPipeline`'s for the same arguments.
        """
        if not self.is_student:
            raise ValueError("loss-based guidance needs a SoundCTM student (a transformer with is_student=True)")
        if intensity_curve is not None and loss_fn is not None:
            raise ValueError("pass at most one of `intensity_curve` and `loss_fn`")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}")
        rho = check_number(rho, "rho", 0.0, float("inf"), low_open=False, high_open=True)
        if isinstance(noise_optimization_steps, bool) or not isinstance(noise_optimization_steps, int) or noise_optimization_steps < 0:
            raise ValueError(f"`noise_optimization_steps` must be an int >= 0, got {noise_optimization_steps!r}")
        noise_learning_rate = check_number(noise_learning_rate, "noise_learning_rate", 0.0, float("inf"), high_open=True)
        controlled = (loss_fn is not None or intensity_curve is not None) and (rho > 0 or noise_optimization_steps > 0)
        if num_inference_steps is None:
            num_inference_steps = GUIDED_STEPS if controlled else self.default_num_inference_steps
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        batch_size = self.check_inputs(
            prompt, negative_prompt, num_inference_steps, guidance_scale, nu, gamma, audio_length_in_s,
            num_waveforms_per_prompt, generator, latents, prompt_embeds, negative_prompt_embeds, output_type,
            callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        device = self._execution_device
        full = self.latent_frames * self.vae.hop_length
        num_samples = full if audio_length_in_s is None else min(full, int(audio_length_in_s * self.sampling_rate))
        if intensity_curve is not None:
            loss_fn = intensity_loss(intensity_curve, num_samples, self.sampling_rate, intensity_range_db).to(device)
        # Drawn here exactly as the base pipeline would draw them, so the generator's later draws (γ noise) match.
        latents = self.prepare_latents(batch_size * num_waveforms_per_prompt, torch.float32, device, generator, latents)

        guide = None
        if controlled:
            cond_embeds, _ = self.encode_prompt(prompt, device, num_waveforms_per_prompt, prompt_embeds=prompt_embeds)
            if noise_optimization_steps > 0:
                latents = self.optimize_initial_noise(
                    latents, cond_embeds, loss_fn, guidance_scale, num_samples, noise_optimization_steps, noise_learning_rate
                )
            if rho > 0:
                guide = self._loss_guidance_callback(
                    latents, loss_fn, rho, guidance_scale, num_samples, callback_on_step_end, callback_on_step_end_tensor_inputs
                )
        tensor_inputs = list(callback_on_step_end_tensor_inputs)
        if guide is not None:
            tensor_inputs = sorted(set(tensor_inputs) | {"latents", "prompt_embeds"})
        return super().__call__(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            nu=nu,
            gamma=gamma,
            audio_length_in_s=audio_length_in_s,
            num_waveforms_per_prompt=num_waveforms_per_prompt,
            generator=generator,
            latents=latents,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            output_type=output_type,
            return_dict=return_dict,
            callback_on_step_end=guide or callback_on_step_end,
            callback_on_step_end_tensor_inputs=tensor_inputs,
        )

    def _loss_guidance_callback(self, latents, loss_fn, rho, guidance_scale, num_samples, user_callback, user_keys):
        """Lines 6–8 of Algorithm 3 after every jump. The base loop has taken z_{t_n} → z_{s_n} (and added the γ noise
        of line 9, which is additive, so subtracting after it equals lines 8 then 9)."""

        def guide(pipe, i, z_n, callback_kwargs):
            sigma_min = pipe.scheduler.config.sigma_min
            with torch.enable_grad():
                z = z_n.detach().float().requires_grad_(True)
                clean = ctm_jump(pipe, z, pipe.scheduler.sigmas[i], sigma_min, callback_kwargs["prompt_embeds"], guidance_scale)
                # Per-waveform losses summed: each waveform's gradient is its own loss's.
                loss = loss_fn(decode_waveform(pipe, clean, num_samples)).sum()
                (grad,) = torch.autograd.grad(loss, z)
            latents = callback_kwargs["latents"]
            return latents - rho * normalized_gradient(grad).to(latents.dtype)

        return step_end_correction(latents, guide, user_callback, user_keys)

    def optimize_initial_noise(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        guidance_scale: float | None = None,
        num_samples: int | None = None,
        num_iterations: int = DITTO2_ITERATIONS,
        learning_rate: float = DITTO2_LEARNING_RATE,
    ) -> torch.Tensor:
        """
        DITTO-2's z_T-optimisation: Adam on z_T = σ_max·ε through the 1-step generation G_θ(z_T, c, ω, σ_max, σ_min)
        (ν = 1), minimising `loss_fn` of the decoded sound. Returns the optimised unit noise `(batch, channels, frames)`
        to pass as `latents`.

        Args:
            latents (`torch.Tensor`): the starting unit noise ε, `(batch, channels, sample_size)`.
            prompt_embeds (`torch.Tensor`): conditioning tokens `(batch, 1, width)` (`encode_prompt`).
            num_samples (`int`, *optional*): samples of the decoded clip the loss sees (default: all).
        """
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        sigma_max = float(self.scheduler.config.sigma_max)
        sigma_min = float(self.scheduler.config.sigma_min)
        num_samples = num_samples or self.latent_frames * self.vae.hop_length
        z_T = torch.nn.Parameter(latents.detach().float() * sigma_max)
        optimizer = torch.optim.Adam([z_T], lr=learning_rate)
        with torch.enable_grad(), self.progress_bar(total=num_iterations) as progress_bar:
            for _ in range(num_iterations):
                optimizer.zero_grad(set_to_none=True)
                clean = ctm_jump(self, z_T, sigma_max, sigma_min, prompt_embeds, guidance_scale)
                loss_fn(decode_waveform(self, clean, num_samples)).sum().backward()
                optimizer.step()
                progress_bar.update()
        return (z_T.detach() / sigma_max).to(latents.dtype)
