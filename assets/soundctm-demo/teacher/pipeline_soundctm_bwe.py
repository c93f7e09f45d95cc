"""Zero-shot bandwidth extension with a SoundCTM student (Saito et al., ICLR 2025, Appendix E.5): a low-passed recording
y = A·x (A: ideal low-pass at `cutoff_hz`, 3 kHz by default) is extended to full band by sampling with the data
consistency of Moliner et al. (2023), so that the observed low band is kept.

At every jump n = 0..N−1 (4 or 8 jumps in the paper's Table 14):

    ẑ₀  = G_θ(z_{t_n}, c, ω, t_n, σ_min)             the student's clean estimate (one network call)
    x̂   = D(ẑ₀)                                       decoded to a waveform
    x̃   = y + (x̂ − A·x̂)                               data consistency: observed band from y, the rest generated
    z̃₀  = E(x̃)                                        re-encoded (posterior mean, standardised)
    z_{s_n} = G_θ(z_{t_n}, c, ω, t_n, s_n) + (1 − s_n/t_n)·(z̃₀ − ẑ₀)

The last line is Moliner et al.'s step — the ODE step taken with the data-consistent denoised estimate in place of the
model's — with the CTM jump G = (s/t)·z + (1 − s/t)·g in place of the Euler step. γ > 0 re-noises after it as usual.
The output waveform gets the same projection once more, so A·output = y exactly (up to clipping to [-1, 1]).

Loading (this file, or a saved folder of this pipeline, brings its sibling modules along):

    DiffusionPipeline.from_pretrained(student_folder, custom_pipeline="pipelines/soundctm/pipeline_soundctm_bwe.py",
                                      trust_remote_code=True)
"""

from typing import Callable

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils import logging

from . import pipeline as soundctm_pipeline
from .guidance import ctm_jump, decode_waveform, encode_waveform, step_end_correction
from .pipeline import OUTPUT_TYPES  # noqa: F401  (a `from .pipeline import` line makes diffusers' loader copy pipeline.py)
from .signal_ops import check_cutoff, lowpass, prepare_input_audio

logger = logging.get_logger(__name__)

DEFAULT_CUTOFF_HZ = 3000.0


class SoundCTMBandwidthExtensionPipeline(soundctm_pipeline.SoundCTMPipeline):
    r"""
    Zero-shot bandwidth extension of low-passed audio with a SoundCTM student and data consistency (Moliner et al.,
    2023). Same components as `SoundCTMPipeline`.
    """

    @torch.no_grad()
    def __call__(
        self,
        audio: np.ndarray | torch.Tensor,
        sampling_rate: int | None = None,
        prompt: str | list[str] | None = None,
        cutoff_hz: float = DEFAULT_CUTOFF_HZ,
        num_inference_steps: int = 4,
        guidance_scale: float | None = None,
        nu: float = 1.0,
        gamma: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> AudioPipelineOutput | tuple:
        r"""
        Extends the band of `audio` above `cutoff_hz`.

        Args:
            audio (`np.ndarray` or `torch.Tensor`): the recording, `(samples,)`, `(channels, samples)` (mixed to mono)
                or `(batch, channels, samples)`, at most `max_audio_length_in_s` long. Only its band up to `cutoff_hz`
                is used (it is low-passed first, so a full-band recording gives the paper's experiment).
            sampling_rate (`int`, *optional*): rate of `audio`; other rates than the model's are resampled (logged).
                `None` means the model's rate.
            prompt (`str` or `list[str]`, *optional*): a caption of the sound; `None` uses the empty prompt "".
            cutoff_hz (`float`, defaults to 3000): the observed band's upper edge, in (0, Nyquist) of both the model's
                and the input's rate.
            num_inference_steps (`int`, defaults to 4): CTM jumps N (the paper reports 4 and 8).
            guidance_scale, nu, gamma, negative_prompt, generator, latents, callback_on_step_end,
            callback_on_step_end_tensor_inputs: as in `SoundCTMPipeline.__call__`.
            output_type (`str`, defaults to `"np"`): `"np"` or `"pt"`.

        Returns:
            `AudioPipelineOutput` with `audios` `(batch, 1, samples)`, as long as the input, at the model's rate.
        """
        if not self.is_student:
            raise ValueError("bandwidth extension needs a SoundCTM student (a transformer with is_student=True)")
        if output_type not in ("np", "pt"):
            raise ValueError(f"`output_type` must be 'np' or 'pt' for bandwidth extension, got {output_type!r}")
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        rate = self.sampling_rate
        input_rate = rate if sampling_rate is None else sampling_rate
        nyquist_rate = min(rate, input_rate) if isinstance(input_rate, (int, np.integer)) else rate
        cutoff_hz = check_cutoff(cutoff_hz, nyquist_rate)
        full = self.latent_frames * self.vae.hop_length
        waveform, notes = prepare_input_audio(audio, sampling_rate, rate, max_samples=full, name="audio")
        for note in notes:
            logger.warning(note)
        batch, num_samples = waveform.shape[0], waveform.shape[-1]
        if prompt is None:
            prompt = ""
        if isinstance(prompt, str):
            prompt = [prompt] * batch
        elif isinstance(prompt, (list, tuple)) and len(prompt) != batch:
            raise ValueError(f"`prompt` has {len(prompt)} entries for {batch} clips; give one per clip or a single str")

        device = self._execution_device
        # The observation y = A·x over the model's whole length (zeros after the clip, kept as silence).
        observed = lowpass(torch.nn.functional.pad(waveform, (0, full - num_samples)), cutoff_hz, rate).to(device)
        latents = self.prepare_latents(batch, torch.float32, device, generator, latents)
        dc = self._data_consistency_callback(latents, observed, cutoff_hz, guidance_scale, nu, callback_on_step_end,
                                             callback_on_step_end_tensor_inputs)  # fmt: skip
        audio_out = super().__call__(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            nu=nu,
            gamma=gamma,
            generator=generator,
            latents=latents,
            output_type="pt",
            callback_on_step_end=dc,
            callback_on_step_end_tensor_inputs=sorted(
                set(callback_on_step_end_tensor_inputs) | {"latents", "prompt_embeds", "negative_prompt_embeds"}
            ),
        ).audios
        # Final data consistency on the waveform: the output's observed band is y's.
        audio_out = observed + audio_out - lowpass(audio_out, cutoff_hz, rate)
        audio_out = audio_out[..., :num_samples].clamp(-1.0, 1.0)
        if output_type == "np":
            audio_out = audio_out.cpu().numpy()
        if not return_dict:
            return (audio_out,)
        return AudioPipelineOutput(audios=audio_out)

    def _data_consistency_callback(self, latents, observed, cutoff_hz, guidance_scale, nu, user_callback, user_keys):
        """The data-consistency correction after every jump. The base loop has taken z_{t_n} → z_{s_n} (and added the
        γ noise, which is additive, so correcting after it equals correcting before)."""
        rate, full = self.sampling_rate, observed.shape[-1]

        def consistency(pipe, i, z_n, callback_kwargs):
            scheduler = pipe.scheduler
            sigma, target_sigma = scheduler.sigmas[i], scheduler.target_sigmas[i]
            latents = callback_kwargs["latents"]
            if i == scheduler.num_inference_steps - 1:
                clean = latents  # the last jump lands on σ_min and adds no noise: it is the clean estimate
            else:
                clean = ctm_jump(
                    pipe, z_n, sigma, scheduler.config.sigma_min, callback_kwargs["prompt_embeds"], guidance_scale,
                    callback_kwargs.get("negative_prompt_embeds"), nu,
                )  # fmt: skip
            estimate = decode_waveform(pipe, clean, full)
            consistent = observed + estimate - lowpass(estimate, cutoff_hz, rate)
            delta = encode_waveform(pipe, consistent) - clean
            return latents + (1.0 - target_sigma / sigma) * delta.to(latents.dtype)

        return step_end_correction(latents, consistency, user_callback, user_keys)
