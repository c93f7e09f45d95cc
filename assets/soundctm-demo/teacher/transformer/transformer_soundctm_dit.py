"""The SoundCTM DiT (Saito et al. 2025): the stable-audio-tools "continuous transformer" DiT of the authors'
44.1 kHz model, layer for layer, as one diffusers model with a teacher/student switch.

Input z (B, C, T) → zero-initialised 1×1 pre-conv (residual) → tokens (B, T, C) → `proj_in` to the width →
one global token [emb(t) + emb(s) + emb(ω)] prepended (→ optional absolute sinusoidal positions, off in the
authors' models) → pre-norm blocks (self-attention with partial rotary positions, cross-attention to the
conditioning tokens, SwiGLU feed-forward) → `proj_out` → global token dropped → zero-initialised 1×1 post-conv
(residual). t and s share the Fourier features and the MLP; ω enters as a parameter-free sinusoidal embedding of
1000·ω. The teacher (`is_student=False`) takes only t; the student adds no parameters, so it is initialised from
the teacher's weights by `load_state_dict`.

Parameter names of the authors' `CTMDiffusionTransformer` map onto this class by `AUTHORS_KEY_RENAMES`
(applied by `convert_authors_state_dict`), a strict one-to-one renaming.

This file only imports torch and diffusers so that diffusers' dynamic loader can load it.
"""

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

# Authors' key (inside `SA_EDM.dit`) -> our key. Every authors' parameter is matched by exactly one rule.
AUTHORS_KEY_RENAMES = [
    (r"^timestep_features\.weight$", "time_proj.weight"),
    (r"^to_timestep_embed\.0\.", "time_embedding.linear_1."),
    (r"^to_timestep_embed\.2\.", "time_embedding.linear_2."),
    (r"^to_cond_embed\.0\.", "context_embedding.linear_1."),
    (r"^to_cond_embed\.2\.", "context_embedding.linear_2."),
    (r"^preprocess_conv\.", "preprocess_conv."),
    (r"^postprocess_conv\.", "postprocess_conv."),
    (r"^transformer\.project_in\.", "proj_in."),
    (r"^transformer\.project_out\.", "proj_out."),
    (r"^transformer\.layers\.(\d+)\.pre_norm\.gamma$", r"transformer_blocks.\1.norm1.weight"),
    (r"^transformer\.layers\.(\d+)\.self_attn\.to_qkv\.", r"transformer_blocks.\1.attn1.to_qkv."),
    (r"^transformer\.layers\.(\d+)\.self_attn\.to_out\.", r"transformer_blocks.\1.attn1.to_out."),
    (r"^transformer\.layers\.(\d+)\.cross_attend_norm\.gamma$", r"transformer_blocks.\1.norm2.weight"),
    (r"^transformer\.layers\.(\d+)\.cross_attn\.to_q\.", r"transformer_blocks.\1.attn2.to_q."),
    (r"^transformer\.layers\.(\d+)\.cross_attn\.to_kv\.", r"transformer_blocks.\1.attn2.to_kv."),
    (r"^transformer\.layers\.(\d+)\.cross_attn\.to_out\.", r"transformer_blocks.\1.attn2.to_out."),
    (r"^transformer\.layers\.(\d+)\.ff_norm\.gamma$", r"transformer_blocks.\1.norm3.weight"),
    (r"^transformer\.layers\.(\d+)\.ff\.ff\.0\.proj\.", r"transformer_blocks.\1.ff.proj_in."),
    (r"^transformer\.layers\.(\d+)\.ff\.ff\.2\.", r"transformer_blocks.\1.ff.proj_out."),
]
# Authors' entries that carry no information here; each is checked before it is dropped.
AUTHORS_CONSTANT_KEYS = [
    r"^transformer\.layers\.\d+\.(pre_norm|cross_attend_norm|ff_norm)\.beta$",  # LayerNorm bias buffer, all zeros
    r"^transformer\.rotary_pos_emb\.inv_freq$",  # rotary frequencies, recomputed from the config
]
# Teacher-only module the authors construct but never call (their teacher's global-conditioning MLP).
AUTHORS_UNUSED_KEYS = [r"^to_global_embed\."]


def convert_authors_state_dict(state_dict: dict, config: dict) -> tuple[dict, list[str]]:
    """
    Renames the authors' DiT state dict (keys relative to `SA_EDM.dit`) onto `SoundCTMDiTModel`.

    Returns `(new_state_dict, dropped_keys)`. Raises `KeyError` naming the key when a key matches no rule, and
    `ValueError` when a dropped constant is not the constant it must be.
    """
    out, dropped = {}, []
    head_dim = config["attention_head_dim"]
    expected_inv_freq = rotary_inv_freq(head_dim)
    for key, value in state_dict.items():
        if any(re.match(p, key) for p in AUTHORS_UNUSED_KEYS):
            dropped.append(key)
            continue
        if any(re.match(p, key) for p in AUTHORS_CONSTANT_KEYS):
            if key.endswith(".beta") and bool(torch.any(value != 0)):
                raise ValueError(f"{key}: expected an all-zero LayerNorm bias buffer")
            if key.endswith("inv_freq") and (
                value.shape != expected_inv_freq.shape or not torch.allclose(value.float(), expected_inv_freq)
            ):
                raise ValueError(f"{key}: rotary frequencies do not match attention_head_dim={head_dim}")
            dropped.append(key)
            continue
        for pattern, replacement in AUTHORS_KEY_RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise KeyError(f"{key}: not a parameter of the authors' SoundCTM DiT")
    return out, dropped


def rotary_inv_freq(head_dim: int) -> torch.Tensor:
    """Rotary frequencies of stable-audio-tools: max(head_dim / 2, 32) channels of each head are rotated (all of
    them when a head is narrower than that, where the authors' code is undefined)."""
    rotary_dim = min(max(head_dim // 2, 32), head_dim)
    return 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))


@dataclass
class SoundCTMDiTOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch, in_channels, frames)`): the raw network output F.
        block_hidden_states (`tuple[torch.Tensor]`, *optional*): every block's output tokens
            `(batch, 1 + frames, width)` (global token first), when `output_block_hidden_states=True`.
    """

    sample: torch.Tensor
    block_hidden_states: tuple[torch.Tensor, ...] | None = None


class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar: [cos(2π t W), sin(2π t W)] (W ~ N(0, 1) at init, then trained)."""

    def __init__(self, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features // 2, 1))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # In float32 whatever the model's dtype: |2π t W| reaches tens of radians.
        f = 2 * math.pi * t[:, None].float() @ self.weight.float().T
        return torch.cat([f.cos(), f.sin()], dim=-1).to(self.weight.dtype)


class MLPEmbedding(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ScaledSinusoidalPositionEmbedding(nn.Module):
    """Absolute positions as [sin(p·f), cos(p·f)], f = 10000^(−k/(dim/2)), times one trained scale that starts at
    dim^−0.5: stable-audio-tools' `ScaledSinusoidalEmbedding`, its transformer's `use_sinusoidal_emb` option."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1) * dim**-0.5)
        half = dim // 2
        self.register_buffer("inv_freq", theta ** -(torch.arange(half).float() / half), persistent=False)

    def forward(self, seq_len: int, device) -> torch.Tensor:
        angles = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * self.inv_freq.to(device)[None]
        return torch.cat((angles.sin(), angles.cos()), dim=-1) * self.scale


def guidance_scale_embedding(omega: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of 1000·ω (sin half, then cos half), as the authors embed the teacher's CFG scale."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float32, device=omega.device))
    args = (omega.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def apply_partial_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotates the first `rot_dim` channels of every head (GPT-J style halves), in float32; `rotary` is
    (cos, sin) of the angles, shape (tokens, rot_dim), computed once per forward for every layer."""
    cos, sin = rotary
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim].float(), x[..., rot_dim:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    x_rot = x_rot * cos + rotated * sin
    return torch.cat((x_rot.to(x.dtype), x_pass), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, rotary_freqs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_partial_rotary(q, rotary_freqs), apply_partial_rotary(k, rotary_freqs)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class CrossAttention(nn.Module):
    """Queries from the sequence; keys/values from the context at its own width, with context_dim / head_dim heads
    each shared by a group of query heads (grouped-query attention)."""

    def __init__(self, dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.kv_heads = context_dim // head_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, context_dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(context).view(b, context.shape[1], 2, self.kv_heads, -1).permute(2, 0, 3, 1, 4)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class SwiGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x):
        x, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(x * F.silu(gate))


class SoundCTMDiTBlock(nn.Module):
    """Pre-norm block: x + SelfAttn(LN x); x + CrossAttn(LN x, ctx); x + FF(LN x). LayerNorms have no bias."""

    def __init__(self, dim: int, head_dim: int, context_dim: int, ff_mult: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=False)
        self.attn1 = SelfAttention(dim, head_dim)
        self.norm2 = nn.LayerNorm(dim, bias=False)
        self.attn2 = CrossAttention(dim, context_dim, head_dim)
        self.norm3 = nn.LayerNorm(dim, bias=False)
        self.ff = SwiGLUFeedForward(dim, ff_mult)

    def forward(self, x, context, context_mask, rotary_freqs):
        x = x + self.attn1(self.norm1(x), rotary_freqs)
        x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SoundCTMDiTModel(ModelMixin, ConfigMixin):
    """
    The SoundCTM diffusion transformer (teacher or CTM student).

    Args:
        in_channels (`int`, defaults to 64): latent channels C.
        num_layers (`int`, defaults to 24): transformer blocks.
        attention_head_dim (`int`, defaults to 64): width of a head; the width is `num_attention_heads * attention_head_dim`.
        num_attention_heads (`int`, defaults to 24).
        cross_attention_dim (`int`, defaults to 768): width of the conditioning tokens (768: CLAP pooled, dit_v2;
            512: CLAP projected, dit_v1). Must be a multiple of `attention_head_dim`.
        timestep_features_dim (`int`, defaults to 256): Fourier features of the time input.
        ff_mult (`int`, defaults to 4): SwiGLU hidden width = `ff_mult` × width.
        sample_size (`int`, defaults to 432): latent frames the model was trained on (432 × 1024 / 44100 ≈ 10.03 s).
        is_student (`bool`, defaults to True): the CTM student takes the jump target s and the teacher's CFG scale ω;
            the teacher (`False`) takes only t.
        sinusoidal_position_embedding (`bool`, defaults to False): also add absolute sinusoidal positions (with a
            trained scale) to the tokens, stable-audio-tools' `use_sinusoidal_emb`. Off in the authors' models
            (rotary positions only) and in the bundled demo teacher; `train_teacher --sinusoidal-positions` tries it
            (recipes/procedural/README.md has what it measured).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SoundCTMDiTBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 64,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        cross_attention_dim: int = 768,
        timestep_features_dim: int = 256,
        ff_mult: int = 4,
        sample_size: int = 432,
        is_student: bool = True,
        sinusoidal_position_embedding: bool = False,
    ):
        super().__init__()
        if cross_attention_dim % attention_head_dim or num_attention_heads % (cross_attention_dim // attention_head_dim):
            raise ValueError(
                f"cross_attention_dim ({cross_attention_dim}) must be a multiple of attention_head_dim "
                f"({attention_head_dim}) giving a number of key/value heads that divides num_attention_heads "
                f"({num_attention_heads})"
            )
        if timestep_features_dim % 2:
            raise ValueError(f"timestep_features_dim must be even, got {timestep_features_dim}")
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim
        self.time_proj = FourierFeatures(timestep_features_dim)
        self.time_embedding = MLPEmbedding(timestep_features_dim, dim, bias=True)
        self.context_embedding = MLPEmbedding(cross_attention_dim, cross_attention_dim, bias=False)
        self.preprocess_conv = nn.Conv1d(in_channels, in_channels, 1, bias=False)
        self.proj_in = nn.Linear(in_channels, dim, bias=False)
        self.transformer_blocks = nn.ModuleList(
            [SoundCTMDiTBlock(dim, attention_head_dim, cross_attention_dim, ff_mult) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(dim, in_channels, bias=False)
        self.postprocess_conv = nn.Conv1d(in_channels, in_channels, 1, bias=False)
        self.register_buffer("rotary_inv_freq", rotary_inv_freq(attention_head_dim), persistent=False)
        self.position_embedding = ScaledSinusoidalPositionEmbedding(dim) if sinusoidal_position_embedding else None
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self):
        # As stable-audio-tools: residual branch outputs and the 1x1 convs start at zero.
        nn.init.zeros_(self.preprocess_conv.weight)
        nn.init.zeros_(self.postprocess_conv.weight)
        for block in self.transformer_blocks:
            nn.init.zeros_(block.attn1.to_out.weight)
            nn.init.zeros_(block.attn2.to_out.weight)
            nn.init.zeros_(block.ff.proj_out.weight)
            nn.init.zeros_(block.ff.proj_out.bias)

    def _rotary_freqs(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of the rotary angles of `seq_len` tokens, shared by every layer's queries and keys."""
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = positions[:, None] * self.rotary_inv_freq.to(device)[None]
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        target_timestep: torch.Tensor | None = None,
        guidance_scale: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_block_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> SoundCTMDiTOutput | tuple:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch, in_channels, frames)`): c_in(t)·z_t.
            timestep (`torch.Tensor` of shape `(batch,)` or scalar): c_noise(t) = ln(t)/4.
            target_timestep (`torch.Tensor` of shape `(batch,)` or scalar): c_noise(s); student only, required.
            guidance_scale (`torch.Tensor` of shape `(batch,)` or scalar): the teacher's CFG scale ω; student only,
                required.
            encoder_hidden_states (`torch.Tensor` of shape `(batch, tokens, cross_attention_dim)`): conditioning.
            encoder_attention_mask (`torch.Tensor` of shape `(batch, tokens)`, *optional*): True/1 = attend.
            output_block_hidden_states (`bool`): also return every block's output tokens (for d_teacher features).
        Returns:
            `SoundCTMDiTOutput` with `.sample` = F, shape `(batch, in_channels, frames)`.
        """
        if hidden_states.ndim != 3 or hidden_states.shape[1] != self.config.in_channels:
            raise ValueError(
                f"hidden_states must have shape (batch, {self.config.in_channels}, frames), got {tuple(hidden_states.shape)}"
            )
        if encoder_hidden_states is None or encoder_hidden_states.ndim != 3:
            raise ValueError("encoder_hidden_states must be a (batch, tokens, cross_attention_dim) tensor")
        if encoder_hidden_states.shape[-1] != self.config.cross_attention_dim:
            raise ValueError(
                f"encoder_hidden_states has width {encoder_hidden_states.shape[-1]}, the model expects "
                f"cross_attention_dim={self.config.cross_attention_dim}"
            )
        batch, device, dtype = hidden_states.shape[0], hidden_states.device, hidden_states.dtype

        def per_sample(value, name):
            value = torch.as_tensor(value, device=device, dtype=torch.float32).reshape(-1)
            if value.numel() == 1:
                value = value.expand(batch)
            if value.shape != (batch,):
                raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(value.shape)}")
            return value

        # Global token: emb(t) [+ emb(s) + emb(ω) for the student].
        emb = self.time_embedding(self.time_proj(per_sample(timestep, "timestep")))
        if self.config.is_student:
            if target_timestep is None or guidance_scale is None:
                raise ValueError("a student transformer needs both target_timestep (c_noise(s)) and guidance_scale (ω)")
            emb = emb + self.time_embedding(self.time_proj(per_sample(target_timestep, "target_timestep")))
            emb = emb + guidance_scale_embedding(per_sample(guidance_scale, "guidance_scale"), self.inner_dim).to(emb.dtype)
        elif target_timestep is not None or guidance_scale is not None:
            raise ValueError("a teacher transformer (is_student=False) takes no target_timestep or guidance_scale")

        context = self.context_embedding(encoder_hidden_states.to(dtype))
        context_mask = None
        if encoder_attention_mask is not None:
            context_mask = encoder_attention_mask.to(device=device, dtype=torch.bool)
            if context_mask.all():
                context_mask = None

        x = self.preprocess_conv(hidden_states) + hidden_states
        x = self.proj_in(x.transpose(1, 2))
        x = torch.cat([emb[:, None].to(x.dtype), x], dim=1)
        if self.position_embedding is not None:  # added to every token, the global one included (stable-audio-tools)
            x = x + self.position_embedding(x.shape[1], device).to(x.dtype)
        rotary_freqs = self._rotary_freqs(x.shape[1], device)

        block_states = []
        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, context, context_mask, rotary_freqs)
            else:
                x = block(x, context, context_mask, rotary_freqs)
            if output_block_hidden_states:
                block_states.append(x)

        x = self.proj_out(x)[:, 1:].transpose(1, 2)
        sample = self.postprocess_conv(x) + x
        block_states = tuple(block_states) if output_block_hidden_states else None
        if not return_dict:
            return (sample, block_states) if output_block_hidden_states else (sample,)
        return SoundCTMDiTOutput(sample=sample, block_hidden_states=block_states)
