"""SoundCTM of Stable Audio Open for diffusers: the pipeline that samples a `SoundCTMStableAudioDiTModel` student (1-step
drafts, N-step deterministic refinement, ν-guidance, ω as an input) with `CTMScheduler`, or its teacher (diffusers'
`StableAudioDiTModel`) with EDM Heun and CFG.

The loop is `SoundCTMPipeline`'s; what is Stable Audio's is its conditioning, as `StableAudioPipeline` builds it:

- a prompt: its T5 states padded to the tokenizer's `model_max_length`, through `StableAudioProjectionModel` (padding
  zeroed), then the seconds-start and seconds-end tokens of the projection model (start 0, end = the length generated:
  `audio_length_in_s`, the model's whole length by default): `(batch, tokens + 2, width)` with the mask
  `(batch, tokens + 2)` (the tokenizer's, then True, True);
- the empty prompt "" (the unconditional branch without a `negative_prompt`, and the trainer's caption dropout) is
  Stable Audio's null condition: an all-False mask, i.e. an all-zero cross-attention sequence whose global token keeps
  the seconds (the DiT's global states are always the last two tokens before masking). That is `StableAudioPipeline`'s
  unconditional input when no negative prompt is given, and what Stable Audio's training drops the text to;
- the DiT's time input is c_noise(σ) = atan(σ)·2/π and it predicts v (the scheduler's `noise_conditioning="atan"`,
  `prediction_type="v_prediction"`), σ in [0.3, 500], σ_data 1;
- output is stereo: `audios` of shape `(batch, 2, samples)` at 44.1 kHz.

Loading:

    SoundCTMStableAudioPipeline.from_pretrained(folder)                         # soundctm installed
    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)          # the folder's own code

This file imports only torch, diffusers, transformers and its sibling `pipeline.py`, so that diffusers' dynamic
loader can load it from a saved folder or a Hub repo.
"""

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .pipeline import SoundCTMPipeline

# StableAudioPipeline's default CFG scale, the ω of a folder that names none.
STABLE_AUDIO_GUIDANCE_SCALE = 7.0


class SoundCTMStableAudioPipeline(SoundCTMPipeline):
    r"""
    Text-to-sound generation with the SoundCTM student of Stable Audio Open (or with Stable Audio Open itself as an EDM
    teacher), stereo 44.1 kHz. Everything `SoundCTMPipeline.__call__` takes works the same (steps, ω, ν, γ,
    `negative_prompt`, generators, `latents`, callbacks, output types); `audio_length_in_s` (at most
    `max_audio_length_in_s`, 47.55 s for Stable Audio Open) also sets the seconds conditioning, as
    `StableAudioPipeline`'s `audio_end_in_s` does with `audio_start_in_s=0`.

    Args:
        vae (`AutoencoderOobleckSoundCTM`): Stable Audio's stereo Oobleck VAE with the package's autoencoder interface.
        text_encoder (`transformers.T5EncoderModel`): the T5 encoder.
        projection_model (`StableAudioProjectionModel`): projects the T5 states and embeds the seconds.
        tokenizer (`transformers.PreTrainedTokenizerBase`): the T5 tokenizer; prompts are padded to its
            `model_max_length`.
        transformer (`SoundCTMStableAudioDiTModel` student, or diffusers' `StableAudioDiTModel` teacher).
        scheduler (`CTMScheduler` for a student, `EDMHeunScheduler` for a teacher), with `prediction_type="v_prediction"`
            and `noise_conditioning="atan"`.
        guidance_scale (`float`, defaults to 7.0): the model's own ω (`StableAudioPipeline`'s default CFG scale).
        num_inference_steps (`int`, *optional*): the model's own default step count (1 for a student, 40 Heun steps
            for a teacher when None).
    """

    model_cpu_offload_seq = "text_encoder->projection_model->transformer->vae"
    _optional_components = []

    def __init__(
        self,
        vae: ModelMixin,
        text_encoder: PreTrainedModel,
        projection_model: ModelMixin,
        tokenizer: PreTrainedTokenizerBase,
        transformer: ModelMixin,
        scheduler: SchedulerMixin,
        guidance_scale: float = STABLE_AUDIO_GUIDANCE_SCALE,
        num_inference_steps: int | None = None,
    ):
        DiffusionPipeline.__init__(self)
        self.check_transformer(transformer)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            projection_model=projection_model,
            tokenizer=tokenizer,
            transformer=transformer,
            scheduler=scheduler,
        )
        self._register_defaults(guidance_scale, num_inference_steps)

    @classmethod
    def check_transformer(cls, transformer) -> None:
        if transformer is not None and "global_states_input_dim" not in transformer.config:
            raise ValueError(
                f"the transformer is a {type(transformer).__name__}, not a Stable Audio DiT: {cls.__name__} samples "
                "Stable Audio Open's SoundCTM student and teacher; load SoundCTM DiT and UNet models with "
                "SoundCTMPipeline (`soundctm.SoundCTMPipeline.from_pretrained(folder)`)"
            )

    @property
    def conditioning_width(self) -> int:
        return int(self.transformer.config.cross_attention_input_dim)

    def conditioning_kwargs(self, audio_length_in_s: float | None) -> dict:
        return {"audio_length_in_s": audio_length_in_s}

    @torch.no_grad()
    def encode_text(self, texts: list[str], device: torch.device, return_mask: bool = False, audio_length_in_s: float | None = None):
        """
        `(embeds, mask)` for `texts`, as `StableAudioPipeline` conditions its DiT: embeds `(len(texts), L + 2, width)` =
        the projected T5 states padded to `model_max_length` = L tokens (padding zeroed), then the seconds-start
        (0 s) and seconds-end (`audio_length_in_s`, default the model's length) tokens; mask `(len(texts), L + 2)`
        bool = the tokenizer's mask then True, True. An empty text "" is the null condition: its mask is all False
        (the DiT sees zeros; its global token keeps the seconds). Requires `return_mask=True`.
        """
        if not return_mask:
            raise ValueError("Stable Audio conditioning needs its mask: call encode_text(texts, device, return_mask=True)")
        if self.text_encoder is None or self.tokenizer is None or self.projection_model is None:
            raise ValueError("this pipeline has no text encoder, tokenizer or projection model: pass `prompt_embeds`")
        batch = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        input_ids, text_mask = batch.input_ids.to(device), batch.attention_mask.to(device).bool()
        hidden = self.text_encoder(input_ids, attention_mask=text_mask.long())[0]
        hidden = self.projection_model(text_hidden_states=hidden).text_hidden_states
        hidden = hidden * text_mask[..., None].to(hidden.dtype)
        end = self.max_audio_length_in_s if audio_length_in_s is None else float(audio_length_in_s)
        count = len(texts)
        seconds = self.projection_model(
            start_seconds=torch.zeros(count, device=device), end_seconds=torch.full((count,), end, device=device)
        )
        embeds = torch.cat(
            [hidden, seconds.seconds_start_hidden_states.to(hidden.dtype), seconds.seconds_end_hidden_states.to(hidden.dtype)],
            dim=1,
        )
        keep = torch.tensor([text != "" for text in texts], device=device)[:, None]
        mask = torch.cat([text_mask, torch.ones(count, 2, dtype=torch.bool, device=device)], dim=1) & keep
        return embeds.float(), mask

    def model_conditioning(self, embeds: torch.Tensor, mask: torch.Tensor | None) -> dict:
        """A student takes the sequence and its mask (`SoundCTMStableAudioDiTModel` zeroes masked tokens and builds its
        global and rotary states). A teacher, diffusers' `StableAudioDiTModel`, gets what `StableAudioPipeline` passes:
        the sequence with masked tokens zeroed, the global states from its last two tokens, the rotary embedding."""
        if self.is_student:
            return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}
        global_states = torch.cat([embeds[:, -2:-1], embeds[:, -1:]], dim=2)
        if mask is not None:
            embeds = embeds * mask[..., None].to(embeds.dtype)
        cos, sin = get_1d_rotary_pos_embed(
            self.transformer.config.attention_head_dim // 2, self.latent_frames + 1, use_real=True, repeat_interleave_real=False
        )
        return {
            "encoder_hidden_states": embeds,
            "global_hidden_states": global_states,
            "rotary_embedding": (cos.to(embeds.device), sin.to(embeds.device)),
        }
