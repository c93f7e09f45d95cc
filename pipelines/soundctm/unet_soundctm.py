"""The SoundCTM-UNet student of the paper's 16 kHz system (released as `Sony/soundctm`).

Its teacher is TANGO's `UNet2DConditionModel` retrained as an EDM denoiser (σ_data 0.25) on AudioLDM's mel-VAE
latents, conditioned on FLAN-T5 token states. The student is that UNet plus two inputs, both added to the time
embedding, where the authors' `tango_edm/unet_2d_condition.py` adds them (after the class and "addition"
embeddings, before `time_embedding_act_fn`), in this order:

- the jump target s: c_noise(s) = ln(s)/4 through its own parameter-free sinusoidal projection `s_time_proj`
  (the same kind as `time_proj`) and its own MLP `s_time_embedding` (the same shape as `time_embedding`);
- ω, the teacher's CFG scale the student was distilled with: the parameter-free sin/cos embedding of 1000·ω
  (`guidance_scale_embedding`, shared with the DiT), as wide as the time embedding (4·block_out_channels[0]).

Parameter names are the authors': their student state dict loads with the identity mapping (every key of
`UNet2DConditionModel` plus `s_time_embedding.linear_{1,2}.{weight,bias}`).
"""

import inspect

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers' loader looks its base class up in this module
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput

from .transformer_soundctm_dit import guidance_scale_embedding

# The key under which `forward` hands the s + ω embedding to `get_aug_embed` through `added_cond_kwargs`, so that
# diffusers' own forward adds it to the time embedding (no state kept on the module between calls).
_JUMP_EMBEDDING_KEY = "soundctm_jump_embedding"


def _per_sample(value, name: str, batch: int, device) -> torch.Tensor:
    """A scalar (or a 1-element tensor) broadcast to (batch,), or a (batch,) tensor; float32 on `device`."""
    value = torch.as_tensor(value, device=device, dtype=torch.float32).reshape(-1)
    if value.numel() == 1:
        value = value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {value.numel()} values")
    return value


class SoundCTMUNet2DConditionModel(UNet2DConditionModel):
    r"""
    The SoundCTM-UNet student: a `UNet2DConditionModel` (TANGO's configuration) that also takes the jump target s
    and the teacher's CFG scale ω. All of `UNet2DConditionModel`'s configuration arguments, plus:

    Parameters:
        is_student (`bool`, defaults to `True`): always True; stored in the config because the pipeline and the
            trainer tell the student from a teacher by `config.is_student` (a teacher, diffusers' own
            `UNet2DConditionModel`, has no such key).

    Only `time_embedding_type="positional"` (TANGO's) is supported. Gradient checkpointing, attention processors,
    LoRA and the other `UNet2DConditionModel` features work as in the parent class.
    """

    @register_to_config
    def __init__(self, *args, is_student: bool = True, **kwargs):
        if is_student is not True:
            raise ValueError(
                "SoundCTMUNet2DConditionModel is the CTM student (is_student=True); the teacher is diffusers' own "
                "UNet2DConditionModel"
            )
        super().__init__(*args, **kwargs)
        config = self.config
        if config.time_embedding_type != "positional":
            raise ValueError(
                f"time_embedding_type={config.time_embedding_type!r} is not supported: the student's s_time_proj is the "
                "parameter-free sinusoidal projection of 'positional' (TANGO's UNet)"
            )
        if config.class_embeddings_concat or config.addition_embed_type == "image_hint":
            raise ValueError(
                "class_embeddings_concat and addition_embed_type='image_hint' are not supported by the student: the s "
                "and ω embeddings are added to a time embedding of width time_embed_dim"
            )
        # As `time_proj` / `time_embedding` of a 'positional' UNet2DConditionModel (and the authors' student).
        time_embed_dim = self.time_embedding.linear_2.out_features
        self.s_time_proj = Timesteps(config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
        self.s_time_embedding = TimestepEmbedding(
            config.block_out_channels[0],
            time_embed_dim,
            act_fn=config.act_fn,
            post_act_fn=config.timestep_post_act,
            cond_proj_dim=config.time_cond_proj_dim,
        )

    def get_aug_embed(self, emb, encoder_hidden_states, added_cond_kwargs):
        """diffusers' "addition" embedding (none in TANGO's config) plus the student's s + ω embedding, which
        `forward` passes in `added_cond_kwargs`: diffusers' forward adds the sum to the time embedding right
        after the class embedding and before `time_embed_act`, where the authors add emb(s) and emb(ω). (They
        add the two one after the other, emb(t) + emb(s) + emb(ω); here emb(t) + (emb(s) + emb(ω)): the same up
        to float rounding — against their code, max |ΔF| ≈ 4e-6 in float32 and 1e-14 in float64 on a tiny UNet.)"""
        added_cond_kwargs = dict(added_cond_kwargs or {})
        jump = added_cond_kwargs.pop(_JUMP_EMBEDDING_KEY, None)
        aug = super().get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
        if jump is None:
            return aug
        return jump if aug is None else aug + jump

    def forward(
        self,
        sample: torch.Tensor | None = None,
        timestep: torch.Tensor | float | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        *,
        target_timestep: torch.Tensor | float | None = None,
        guidance_scale: torch.Tensor | float | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        hidden_states: torch.Tensor | None = None,
        **unet_kwargs,
    ) -> UNet2DConditionOutput | tuple:
        r"""
        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, frames, mel_bins)`): c_in(t)·z_t.
            timestep (`torch.Tensor` of shape `(batch,)`, or a scalar): c_noise(t) = ln(t)/4.
            encoder_hidden_states (`torch.Tensor` of shape `(batch, tokens, cross_attention_dim)`): the text states.
            target_timestep (`torch.Tensor` of shape `(batch,)`, or a scalar): c_noise(s) of the jump target s;
                required.
            guidance_scale (`torch.Tensor` of shape `(batch,)`, or a scalar): ω; required. Each sample gets the
                embedding of its own ω. (The authors' sampler builds ω with the prompt batch size B but calls the
                network on the 2B batch [cond; uncond], so their (B, width) ω embedding only broadcasts onto the
                (2B, width) time embedding when B = 1 and fails for B > 1; here ω is one value per row of
                `sample`, and the pipeline passes it for every row.)
            encoder_attention_mask (`torch.Tensor` of shape `(batch, tokens)`, *optional*): True/1 = attend,
                False/0 = padding; turned into the -10000 bias of diffusers (and of the authors).
            return_dict (`bool`, defaults to `True`): return a `UNet2DConditionOutput` rather than a tuple.
            hidden_states (`torch.Tensor`, *optional*): another name for `sample`, the DiT's, so that the trainer's
                family-neutral call `model(hidden_states=..., timestep=..., ...)` works on either student.
            **unet_kwargs: the other keyword arguments of `UNet2DConditionModel.forward` (`timestep_cond`,
                `cross_attention_kwargs`, `added_cond_kwargs`, ...), passed on.

        Returns:
            `UNet2DConditionOutput` with `.sample` = F, the raw network output, shaped as `sample`.
        """
        if hidden_states is not None:
            if sample is not None:
                raise ValueError("pass the noisy latent as `sample` or as `hidden_states`, not both")
            sample = hidden_states
        if timestep is None:
            raise ValueError("timestep (c_noise(t)) is required")
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must have shape (batch, {self.config.in_channels}, frames, mel_bins), got {shape}")
        if target_timestep is None or guidance_scale is None:
            raise ValueError("the SoundCTM-UNet student needs both target_timestep (c_noise(s)) and guidance_scale (ω)")
        batch, device = sample.shape[0], sample.device
        if not isinstance(encoder_hidden_states, torch.Tensor) or encoder_hidden_states.ndim != 3:
            raise ValueError("encoder_hidden_states must be a (batch, tokens, cross_attention_dim) tensor")
        width = self.config.cross_attention_dim
        if encoder_hidden_states.shape[0] != batch or (isinstance(width, int) and encoder_hidden_states.shape[2] != width):
            raise ValueError(
                f"encoder_hidden_states must have shape ({batch}, tokens, {width}), got {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_attention_mask is not None:
            if tuple(encoder_attention_mask.shape) != tuple(encoder_hidden_states.shape[:2]):
                raise ValueError(
                    f"encoder_attention_mask must have shape {tuple(encoder_hidden_states.shape[:2])} (batch, tokens), "
                    f"got {tuple(encoder_attention_mask.shape)}"
                )
            encoder_attention_mask = encoder_attention_mask.to(device=device, dtype=torch.bool)
            if encoder_attention_mask.all():  # a zero bias: the same result, and SDPA may take a faster kernel
                encoder_attention_mask = None

        timestep = _per_sample(timestep, "timestep", batch, device)
        target_timestep = _per_sample(target_timestep, "target_timestep", batch, device)
        guidance_scale = _per_sample(guidance_scale, "guidance_scale", batch, device)

        # emb(s): as emb(t) in diffusers (sinusoid in float32, cast to the sample's dtype, then the MLP); the
        # authors pass `timestep_cond` to it as well.
        s_emb = self.s_time_embedding(self.s_time_proj(target_timestep).to(sample.dtype), unet_kwargs.get("timestep_cond"))
        w_emb = guidance_scale_embedding(guidance_scale, s_emb.shape[-1]).to(s_emb.dtype)
        added_cond_kwargs = dict(unet_kwargs.pop("added_cond_kwargs", None) or {})
        added_cond_kwargs[_JUMP_EMBEDDING_KEY] = s_emb + w_emb
        return super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=return_dict,
            **unet_kwargs,
        )

    @classmethod
    def from_teacher(cls, teacher: UNet2DConditionModel, **config_overrides) -> "SoundCTMUNet2DConditionModel":
        """
        The student initialised from its teacher (the paper; the authors' `ctm_train.py`): the teacher's config
        (with `config_overrides`, e.g. `sample_size`) and every teacher weight, on the teacher's device and dtype.
        The one new module, `s_time_embedding`, keeps the PyTorch default initialisation of its `nn.Linear`
        layers, as in the authors' code (their name-matching copy finds no teacher parameter for it): seed torch
        for a reproducible student. `s_time_proj` and the ω embedding have no parameters.
        """
        if not isinstance(teacher, UNet2DConditionModel) or isinstance(teacher, SoundCTMUNet2DConditionModel):
            raise TypeError(f"teacher must be a diffusers UNet2DConditionModel (not a student), got {type(teacher).__name__}")
        if teacher.config.get("is_student", False):
            raise ValueError("teacher.config.is_student is True: build the student from its teacher, not from a student")
        student = cls.from_config(teacher.config, **config_overrides).to(teacher.device)
        if student.dtype != teacher.dtype:
            student.to(teacher.dtype)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        new = sorted(k for k in student.state_dict() if k.startswith("s_time_embedding."))
        if unexpected or sorted(missing) != new:
            raise ValueError(
                "the teacher's weights do not fit the student built from its config: "
                f"unexpected {sorted(unexpected)[:3]}, missing {sorted(set(missing) - set(new))[:3]}"
            )
        return student


# diffusers reads a model's config keys off its `__init__` signature (to save them, and to pick them out of a
# config.json when loading). The student's are the UNet's plus `is_student`: state that signature explicitly, so
# the config round-trips through save_pretrained/from_pretrained/from_config with `is_student: true` and no
# warning, while `__init__` hands everything else to `UNet2DConditionModel.__init__` unchanged.
SoundCTMUNet2DConditionModel.__init__.__wrapped__.__signature__ = inspect.signature(UNet2DConditionModel.__init__).replace(
    parameters=[
        *inspect.signature(UNet2DConditionModel.__init__).parameters.values(),
        inspect.Parameter("is_student", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool),
    ]
)
