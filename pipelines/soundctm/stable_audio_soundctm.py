"""The SoundCTM student of Stable Audio Open (`stabilityai/stable-audio-open-1.0`): diffusers' `StableAudioDiTModel`
plus the jump target s and the teacher's CFG scale ω, the paper's recipe for a student.

The teacher embeds its time input (Stable Audio's c_noise(σ) = atan(σ)·2/π, what `StableAudioPipeline` passes as
`timestep`) as `timestep_proj(time_proj(t))` (Gaussian Fourier features, then an MLP) and adds that vector to the
projected seconds-start/seconds-end states (`global_proj`), the one "global" token prepended to the sequence. The
student adds two more vectors to the time embedding, at that point:

- emb(s): the jump target s, in the same units as t, through the teacher's OWN time embedding
  (`timestep_proj(time_proj(s))`, shared weights);
- emb(ω): the parameter-free sin/cos embedding of 1000·ω (`guidance_scale_embedding`, shared with the other
  students), as wide as the time embedding (`num_attention_heads · attention_head_dim`).

So the global token is `global_proj(g) + (emb(t) + emb(s) + emb(ω))`. The student has no parameter the teacher
lacks: `from_teacher` loads the teacher's state dict strictly, and the student's state dict is the teacher's.
"""

import inspect

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers' loader looks its base class up in this module
from diffusers.models.transformers.stable_audio_transformer import StableAudioDiTModel
from diffusers.models.transformers.transformer_2d import Transformer2DModelOutput

from .transformer_soundctm_dit import guidance_scale_embedding
from .unet_soundctm import _per_sample


def stable_audio_global_states(encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """The global states `StableAudioPipeline` passes, from its `encoder_hidden_states`: the pipeline builds the
    latter as [text tokens; seconds_start; seconds_end] (dim 1) and the former as [seconds_start, seconds_end]
    concatenated along the features (dim 2), one token: (batch, 1, 2·D)."""
    start, end = encoder_hidden_states[:, -2:-1], encoder_hidden_states[:, -1:]
    return torch.cat([start, end], dim=2)


def stable_audio_rotary_embedding(attention_head_dim: int, frames: int, global_tokens: int = 1):
    """The rotary embedding `StableAudioPipeline` passes (its step 7): RoPE on half of each head's channels, over the
    latent frames plus the prepended global token, computed on the CPU in float32 as the pipeline does."""
    return get_1d_rotary_pos_embed(
        attention_head_dim // 2, frames + global_tokens, use_real=True, repeat_interleave_real=False
    )


class SoundCTMStableAudioDiTModel(StableAudioDiTModel):
    r"""
    The CTM student of Stable Audio Open: a `StableAudioDiTModel` that also takes the jump target s and the teacher's
    CFG scale ω. All of `StableAudioDiTModel`'s configuration arguments, plus:

    Parameters:
        is_student (`bool`, defaults to `True`): always True; stored in the config because the pipeline and the
            trainer tell the student from a teacher by `config.is_student` (a teacher, diffusers' own
            `StableAudioDiTModel`, has no such key).

    Gradient checkpointing, attention processors and the other `StableAudioDiTModel` features work as in the parent.
    """

    @register_to_config
    def __init__(self, *args, is_student: bool = True, **kwargs):
        if is_student is not True:
            raise ValueError(
                "SoundCTMStableAudioDiTModel is the CTM student (is_student=True); the teacher is diffusers' own "
                "StableAudioDiTModel"
            )
        super().__init__(*args, **kwargs)

    def jump_embedding(self, target_timestep: torch.Tensor, guidance_scale: torch.Tensor) -> torch.Tensor:
        """emb(s) + emb(ω), (batch, inner_dim): s through the teacher's time embedding, exactly as the parent embeds
        t (`timestep_proj(time_proj(t.to(dtype)))`), plus the parameter-free embedding of 1000·ω."""
        s_emb = self.timestep_proj(self.time_proj(target_timestep.to(self.dtype)))
        w_emb = guidance_scale_embedding(guidance_scale, s_emb.shape[-1]).to(s_emb.dtype)
        return s_emb + w_emb

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        target_timestep: torch.Tensor | float | None = None,
        guidance_scale: torch.Tensor | float | None = None,
        global_hidden_states: torch.Tensor | None = None,
        rotary_embedding: tuple[torch.Tensor, torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(batch, in_channels, frames)`): c_in(t)·z_t.
            timestep (`torch.Tensor` of shape `(batch,)`, or a scalar): the teacher's time input c_noise(t) (for
                Stable Audio Open atan(σ)·2/π, what `StableAudioPipeline` passes).
            encoder_hidden_states (`torch.Tensor` of shape `(batch, tokens, cross_attention_input_dim)`): as
                `StableAudioPipeline` passes them: the projected T5 states followed by the seconds_start and
                seconds_end states (the last two tokens).
            target_timestep (`torch.Tensor` of shape `(batch,)`, or a scalar): c_noise(s) of the jump target s, in
                the units of `timestep`; required.
            guidance_scale (`torch.Tensor` of shape `(batch,)`, or a scalar): ω; required. Each sample gets the
                embedding of its own ω.
            global_hidden_states (`torch.Tensor` of shape `(batch, 1, global_states_input_dim)`, *optional*): the
                seconds states concatenated along the features. Default: built from the last two tokens of
                `encoder_hidden_states`, as the pipeline builds them. Pass them explicitly where those tokens are not
                the seconds states: `StableAudioPipeline`'s unconditional half without a negative prompt zeroes the
                whole `encoder_hidden_states` (seconds tokens included) but keeps the real seconds in the global
                states.
            rotary_embedding (`tuple(torch.Tensor, torch.Tensor)`, *optional*): (cos, sin). Default: the pipeline's,
                over `frames + 1` positions (see `stable_audio_rotary_embedding`).
            encoder_attention_mask (`torch.Tensor` of shape `(batch, tokens)`, *optional*): Stable Audio's
                convention, the one its teacher was trained and sampled with: a token where the mask is False/0 is
                ZEROED and still attended (`StableAudioPipeline` passes no mask to the DiT; it multiplies the padded
                T5 states by the tokenizer mask, and its unconditional half without a negative prompt is an all-zero
                sequence whose global states keep the real seconds). The default global states are built from the
                last two tokens BEFORE zeroing, so an all-False mask is that null condition. None: every token kept.
            attention_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): an attention mask over the latent
                frames, passed to `StableAudioDiTModel` (True/1 = attend; an all-True mask is dropped, the same result).
            return_dict (`bool`, defaults to `True`): return a `Transformer2DModelOutput` rather than a tuple.

        Returns:
            `Transformer2DModelOutput` with `.sample` = F, the raw network output, shaped as `hidden_states`.
        """
        if timestep is None:
            raise ValueError("timestep (c_noise(t)) is required")
        channels = self.config.in_channels
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 3 or hidden_states.shape[1] != channels:
            shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
            raise ValueError(f"hidden_states must have shape (batch, {channels}, frames), got {shape}")
        if target_timestep is None or guidance_scale is None:
            raise ValueError(
                "the SoundCTM Stable Audio student needs both target_timestep (c_noise(s)) and guidance_scale (ω)"
            )
        batch, frames, device = hidden_states.shape[0], hidden_states.shape[2], hidden_states.device
        width = self.config.cross_attention_input_dim
        if (
            not isinstance(encoder_hidden_states, torch.Tensor)
            or encoder_hidden_states.ndim != 3
            or encoder_hidden_states.shape[0] != batch
            or encoder_hidden_states.shape[2] != width
        ):
            shape = (
                tuple(encoder_hidden_states.shape)
                if isinstance(encoder_hidden_states, torch.Tensor)
                else type(encoder_hidden_states).__name__
            )
            raise ValueError(f"encoder_hidden_states must have shape ({batch}, tokens, {width}), got {shape}")

        mask = encoder_attention_mask
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(encoder_hidden_states.shape[:2])):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"encoder_attention_mask must have shape {tuple(encoder_hidden_states.shape[:2])}, got {got}")

        if global_hidden_states is None:
            if encoder_hidden_states.shape[1] < 2 or 2 * width != self.config.global_states_input_dim:
                raise ValueError(
                    "global_hidden_states is None and cannot be built from encoder_hidden_states: it needs the "
                    f"seconds_start/seconds_end states as its last two tokens and global_states_input_dim "
                    f"({self.config.global_states_input_dim}) = 2 · cross_attention_input_dim ({width})"
                )
            global_hidden_states = stable_audio_global_states(encoder_hidden_states)
        expected = (batch, 1, self.config.global_states_input_dim)
        if global_hidden_states.ndim != 3 or tuple(global_hidden_states.shape) != expected:
            # The parent prepends global_hidden_states.shape[1] tokens but strips one from the output.
            raise ValueError(f"global_hidden_states must have shape {expected}, got {tuple(global_hidden_states.shape)}")
        if rotary_embedding is None:
            rotary_embedding = stable_audio_rotary_embedding(self.config.attention_head_dim, frames)
        rotary_embedding = tuple(r.to(device) for r in rotary_embedding)

        def as_mask(mask, name, length):
            if mask is None:
                return None
            if tuple(mask.shape) != (batch, length):
                raise ValueError(f"{name} must have shape ({batch}, {length}), got {tuple(mask.shape)}")
            mask = mask.to(device=device, dtype=torch.bool)
            return None if mask.all() else mask

        if mask is not None:  # zeroed, not hidden from attention (see the docstring)
            encoder_hidden_states = encoder_hidden_states * mask.to(device=device, dtype=encoder_hidden_states.dtype)[..., None]
        attention_mask = as_mask(attention_mask, "attention_mask", frames)

        timestep = _per_sample(timestep, "timestep", batch, device)
        target_timestep = _per_sample(target_timestep, "target_timestep", batch, device)
        guidance_scale = _per_sample(guidance_scale, "guidance_scale", batch, device)
        jump = self.jump_embedding(target_timestep, guidance_scale)

        # diffusers' forward embeds t as `time_hidden_states = self.timestep_proj(self.time_proj(t))` and adds it to the
        # global token; a forward hook on `timestep_proj`, held for this call only, makes that emb(t) + jump, and the
        # rest of the forward is the parent's own.
        handle = self.timestep_proj.register_forward_hook(lambda module, args, output: output + jump)
        try:
            return super().forward(
                hidden_states,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                global_hidden_states=global_hidden_states,
                rotary_embedding=rotary_embedding,
                return_dict=return_dict,
                attention_mask=attention_mask,
            )
        finally:
            handle.remove()

    @classmethod
    def from_teacher(cls, teacher: StableAudioDiTModel, **config_overrides) -> "SoundCTMStableAudioDiTModel":
        """
        The student initialised from its teacher (the paper's recipe): the teacher's config (with
        `config_overrides`, e.g. `sample_size`) and every teacher weight, loaded strictly (the student has no
        parameter of its own), on the teacher's device and dtype.
        """
        if not isinstance(teacher, StableAudioDiTModel) or isinstance(teacher, SoundCTMStableAudioDiTModel):
            raise TypeError(f"teacher must be a diffusers StableAudioDiTModel (not a student), got {type(teacher).__name__}")
        if teacher.config.get("is_student", False):
            raise ValueError("teacher.config.is_student is True: build the student from its teacher, not from a student")
        student = cls.from_config(teacher.config, **config_overrides).to(teacher.device)
        if student.dtype != teacher.dtype:
            student.to(teacher.dtype)
        student.load_state_dict(teacher.state_dict(), strict=True)
        return student


# diffusers reads a model's config keys off its `__init__` signature (to save them, and to pick them out of a
# config.json when loading). The student's are the teacher's plus `is_student`: state that signature explicitly, so
# the config round-trips through save_pretrained/from_pretrained/from_config with `is_student: true` and no warning,
# while `__init__` hands everything else to `StableAudioDiTModel.__init__` unchanged.
SoundCTMStableAudioDiTModel.__init__.__wrapped__.__signature__ = inspect.signature(StableAudioDiTModel.__init__).replace(
    parameters=[
        *inspect.signature(StableAudioDiTModel.__init__).parameters.values(),
        inspect.Parameter("is_student", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool),
    ]
)
