"""Audio-to-audio refinement with SoundCTM: a given sound is encoded, noised part of the way up the sampling path, and
brought back down by CTM jumps under a prompt (the SDEdit recipe of Meng et al. 2022, with the student's jumps).

    z₀      = E(x)                                      (posterior mean, standardised)
    σ_start = (σ_max^{1/ρ} + (1 − strength)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ    (`strength` of the Karras ramp)
    z       = z₀ + σ_start·ε,  then N jumps on the Karras grid from σ_start to σ_min (γ-sampling as usual)

`strength` ∈ (0, 1]: near 0 keeps the input (σ_start → σ_min), 1 starts from σ_max, where the input is drowned in
noise of standard deviation 80: the pipeline then draws z = σ_max·ε exactly as text-to-audio does, so strength 1 *is*
text-to-audio (same seed, same sound). At γ = 0 the same seed gives the same result. Works with a student
(CTMScheduler) and with a teacher (EDMHeunScheduler, then it is SDEdit with the teacher's Heun sampler).

Loading (this file, or a saved folder of this pipeline, brings its sibling modules along):

    DiffusionPipeline.from_pretrained(student_folder, custom_pipeline="pipelines/soundctm/pipeline_soundctm_audio2audio.py",
                                      trust_remote_code=True)
"""

from typing import Callable

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils import logging

from . import pipeline as soundctm_pipeline
from .guidance import check_number, encode_waveform, karras_sigma
from .pipeline import OUTPUT_TYPES  # noqa: F401  (a `from .pipeline import` line makes diffusers' loader copy pipeline.py)
from .signal_ops import prepare_input_audio

logger = logging.get_logger(__name__)


class SoundCTMAudioToAudioPipeline(soundctm_pipeline.SoundCTMPipeline):
    r"""
    Refines a given sound toward a prompt with SoundCTM jumps from an intermediate noise level set by `strength`.
    Same components as `SoundCTMPipeline`.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        audio: np.ndarray | torch.Tensor | None = None,
        sampling_rate: int | None = None,
        strength: float = 0.5,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        nu: float = 1.0,
        gamma: float = 0.0,
        num_waveforms_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> AudioPipelineOutput | tuple:
        r"""
        Refines `audio` toward `prompt`. The arguments of `SoundCTMPipeline.__call__`, plus:

        Args:
            audio (`np.ndarray` or `torch.Tensor`): the sound to refine, `(samples,)`, `(channels, samples)` (mixed to
                mono) or `(batch, channels, samples)` with batch 1 (used for every prompt) or one clip per prompt; at
                most `max_audio_length_in_s` long. Empty, silent or non-finite audio is a ValueError.
            sampling_rate (`int`, *optional*): rate of `audio`; other rates than the model's are resampled (logged).
                `None` means the model's rate.
            strength (`float`, defaults to 0.5): in (0, 1], how far up the Karras noise ramp the input is taken before
                it is refined: small keeps it, 1 is text-to-audio.
            num_inference_steps (`int`, *optional*): jumps from σ_start down to σ_min (default 1 for a student).

        Returns:
            `AudioPipelineOutput` with `audios` `(batch·num_waveforms, 1, samples)` as long as the input (or the
            standardised latents for `output_type="latent"`).
        """
        if audio is None:
            raise ValueError("`audio` is required: the sound to refine (use SoundCTMPipeline for text-to-audio)")
        strength = check_number(strength, "strength", 0.0, 1.0)
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        batch_size = self.check_inputs(
            prompt, negative_prompt, num_inference_steps, guidance_scale, nu, gamma, None, num_waveforms_per_prompt,
            generator, None, prompt_embeds, negative_prompt_embeds, output_type, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        full = self.latent_frames * self.vae.hop_length
        waveform, notes = prepare_input_audio(audio, sampling_rate, self.sampling_rate, max_samples=full, name="audio")
        for note in notes:
            logger.warning(note)
        if waveform.shape[0] not in (1, batch_size):
            raise ValueError(f"`audio` holds {waveform.shape[0]} clips for {batch_size} prompts; give 1 or one per prompt")
        num_samples = waveform.shape[-1]
        total = batch_size * num_waveforms_per_prompt
        device = self._execution_device

        # ε is drawn first, as text-to-audio draws it, so strength 1 and text-to-audio share the generator's stream.
        noise = self.prepare_latents(total, torch.float32, device, generator)
        scheduler = self.scheduler
        if strength < 1.0:
            sigma_start = karras_sigma(scheduler, strength)
            padded = torch.nn.functional.pad(waveform, (0, full - num_samples)).to(device)
            clean = encode_waveform(self, padded)
            clean = clean.expand(total, -1, -1) if clean.shape[0] == 1 else clean.repeat_interleave(num_waveforms_per_prompt, 0)
            # The base loop multiplies its unit latents by init_noise_sigma = σ_start: hand it z/σ_start.
            latents = (clean + sigma_start * noise) / sigma_start
            # A scheduler whose grid starts at σ_start: set_timesteps(N, sigma_max=σ_start) with the base loop's call.
            self.scheduler = type(scheduler).from_config(scheduler.config, sigma_max=sigma_start)
        else:
            latents = noise
        try:
            result = super().__call__(
                prompt=prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                nu=nu,
                gamma=gamma,
                num_waveforms_per_prompt=num_waveforms_per_prompt,
                generator=generator,
                latents=latents,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                output_type="latent" if output_type == "latent" else "pt",
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            ).audios
        finally:
            self.scheduler = scheduler
        if output_type != "latent":
            result = result[..., :num_samples]
            if output_type == "np":
                result = result.cpu().numpy()
        if not return_dict:
            return (result,)
        return AudioPipelineOutput(audios=result)
