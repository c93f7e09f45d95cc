"""AudioLDM's mel VAE and HiFi-GAN vocoder (`audioldm-s-full.ckpt`, which SoundCTM-UNet and TANGO use as their
"stage 1" model, released again in the Hugging Face repo `Sony/soundctm` as `ckpt/audioldm-s-full.ckpt`) as one
`AutoencoderMelVocoder`.

What the file holds (read from the authors' code, github.com/sony/soundctm, `tango_edm/models_edm.py`
`build_pretrained_models` and `tango_edm/audioldm/`): a Lightning checkpoint whose `state_dict` is AudioLDM's
`LatentDiffusion`:

- `first_stage_model.*`: their `AutoencoderKL` — `encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*` (the
  latent-diffusion VAE layout) and `vocoder.*` (HiFi-GAN V1 `Generator`, weight norm already removed: `conv_pre`,
  `ups.i`, `resblocks.k.convs{1,2}.j`, `conv_post`). SoundCTM loads exactly these keys, strictly.
- `scale_factor`: the latent scale. SoundCTM trains and samples its EDM UNet on `scale_factor · z` (z a sample of the
  VAE posterior, `get_first_stage_encoding`) and decodes `z_norm / scale_factor` (`decode_first_stage`): here
  `latents_std = σ_data / scale_factor` per channel, `latents_mean` None, `scaling_factor` = σ_data (the teacher's,
  0.25, the project's convention for every autoencoder), so that `standardize(z) = scale_factor · z` is the UNet's
  space.
- the rest, dropped: `model.diffusion_model.*` (AudioLDM's own UNet), `model_ema.*`, `cond_stage_model.*` (its CLAP),
  and the DDPM noise-schedule buffers (`betas`, `alphas_cumprod`, ...).

The key mapping is written here from the two module trees (the latent-diffusion `Encoder`/`Decoder` → diffusers'
`AutoencoderKL`, HiFi-GAN `Generator` → transformers' `SpeechT5HifiGan`). Every source key is either converted or
dropped by an explicit rule; anything else, a missing key or a tensor of the wrong shape is a `ValueError` naming the
file and the key.

    python -m hub.audioldm_checkpoint ckpt/audioldm-s-full.ckpt OUTPUT_DIR [--trust-pickles]
"""

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from hub.authors_checkpoints import fold_weight_norms, load_pickle
from soundctm import AutoencoderMelVocoder

# tango_edm/audioldm/utils.py `default_audioldm_config("audioldm-s-full")["preprocessing"]`: audio.sampling_rate,
# stft.{filter_length, hop_length, win_length}, mel.{n_mel_channels, mel_fmin, mel_fmax}; the log floor is
# `dynamic_range_compression`'s clip_val (tango_edm/audioldm/audio/audio_processing.py).
AUDIOLDM_S_MEL = dict(
    sampling_rate=16000,
    n_fft=1024,
    stft_hop_length=160,
    win_length=1024,
    n_mels=64,
    f_min=0.0,
    f_max=8000.0,
    log_floor=1e-5,
)

# The same config's `model.params.first_stage_config.params`: embed_dim 8 (latent channels), ddconfig ch 128,
# ch_mult [1, 2, 4] (three levels: 128, 256, 512 channels, two 2× downsamplings of time and mel bins),
# num_res_blocks 2, attn_resolutions [] (attention only in the middle blocks), in_channels 1, out_ch 1, z_channels 8,
# double_z, resolution 256; GroupNorm of 32 groups, eps 1e-6 (variational_autoencoder/modules.py `Normalize`).
# `scaling_factor` (informational in diffusers' AutoencoderKL) is set to the checkpoint's `scale_factor` at conversion.
AUDIOLDM_S_VAE_CONFIG = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[128, 256, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=8,
    norm_num_groups=32,
    sample_size=256,
    mid_block_add_attention=True,
)

# tango_edm/audioldm/hifigan/utilities.py `HIFIGAN_16K_64` (resblock "1"); the leaky-ReLU slope is models.py's
# LRELU_SLOPE; their Generator does not normalise its input (no mean/scale).
AUDIOLDM_S_VOCODER_CONFIG = dict(
    model_in_dim=64,
    sampling_rate=16000,
    upsample_initial_channel=1024,
    upsample_rates=[5, 4, 2, 2, 2],
    upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    leaky_relu_slope=0.1,
    normalize_before=False,
)

FIRST_STAGE = "first_stage_model."
# Keys of AudioLDM's LatentDiffusion that are not the VAE or the vocoder (`scale_factor` is read, not dropped).
DROPPED = [
    r"^model\.diffusion_model\.",
    r"^model_ema\.",
    r"^cond_stage_model\.",
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod"
    r"|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance"
    r"|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|lvlb_weights|logvar)$",
]
# Buffers of SpeechT5HifiGan that AudioLDM's vocoder does not have: the input normalisation, unused with
# normalize_before=False, set to the identity.
VOCODER_CONSTANTS = ("vocoder.mean", "vocoder.scale")

# diffusers' name → the latent-diffusion name, inside a resnet block and the middle attention block
_RESNET = {"conv_shortcut": "nin_shortcut"}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def source_key(key: str, num_levels: int) -> str:
    """The name in AudioLDM's checkpoint of the `AutoencoderMelVocoder` parameter `key` (the mapping, written from
    the target side so that every parameter of the model has exactly one source)."""
    if key.startswith("vocoder."):
        return FIRST_STAGE + re.sub(r"^vocoder\.upsampler\.", "vocoder.ups.", key)
    if not key.startswith("vae."):
        raise KeyError(key)
    rest = key[len("vae."):]
    rules = [
        (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.",
         lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{_RESNET.get(m[3], m[3])}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
         lambda m: f"{m[1]}.mid.attn_1.{_ATTENTION[m[2]]}."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.",
         lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_RESNET.get(m[3], m[3])}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", lambda m: f"encoder.down.{m[1]}.downsample.conv."),
        # diffusers orders the decoder's blocks from the lowest resolution up, the latent-diffusion code by level
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.",
         lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{_RESNET.get(m[3], m[3])}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
         lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv."),
    ]
    for pattern, replacement in rules:
        match = re.match(pattern, rest)
        if match:
            return FIRST_STAGE + replacement(match) + rest[match.end():]
    return FIRST_STAGE + rest  # conv_in, conv_out, quant_conv, post_quant_conv: same names


@dataclass
class AudioLDMConversion:
    model: AutoencoderMelVocoder
    scale_factor: float
    converted_keys: list[str]  # source keys whose tensors are in the model
    dropped_keys: list[str]  # source keys of the rest of AudioLDM (its UNet, CLAP, noise schedule)


def convert_audioldm_state_dict(
    state_dict: dict,
    source: str = "state dict",
    vae_config: dict | None = None,
    vocoder_config: dict | None = None,
    mel_config: dict | None = None,
    sigma_data: float = 0.25,
) -> AudioLDMConversion:
    """An AudioLDM `LatentDiffusion` state dict (`first_stage_model.*`, `scale_factor`, ...) → `AutoencoderMelVocoder`
    with AudioLDM-S's configs (or the ones given). `source` names the input in error messages (the file)."""
    vae_config = dict(vae_config or AUDIOLDM_S_VAE_CONFIG)
    vocoder_config = dict(vocoder_config or AUDIOLDM_S_VOCODER_CONFIG)
    mel_config = dict(mel_config or AUDIOLDM_S_MEL)
    if "scale_factor" not in state_dict:
        raise ValueError(f"{source}: no key 'scale_factor': not an AudioLDM LatentDiffusion checkpoint")
    try:
        scale = float(torch.as_tensor(state_dict["scale_factor"], dtype=torch.float64).reshape(-1).item())
    except (TypeError, ValueError, RuntimeError):
        scale = float("nan")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{source}: 'scale_factor' must be one finite positive number, got {state_dict['scale_factor']!r}")

    dropped, first_stage = [], {}
    for key, value in state_dict.items():
        if key == "scale_factor":
            continue
        if key.startswith(FIRST_STAGE):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
            first_stage[key] = value
        elif any(re.match(p, key) for p in DROPPED):
            dropped.append(key)
        else:
            raise ValueError(f"{source}: {key!r} is not a key of AudioLDM's LatentDiffusion that this conversion knows")
    if not first_stage:
        raise ValueError(f"{source}: no '{FIRST_STAGE}*' keys: not an AudioLDM checkpoint with its VAE")
    # A vocoder saved with weight norm still on (weight_g, weight_v) is folded, as `remove_weight_norm` would.
    first_stage, folded_from = fold_weight_norms(first_stage, Path(source))

    latent_dim = vae_config["latent_channels"]
    vae_config["scaling_factor"] = scale
    model = AutoencoderMelVocoder(
        vae_config=vae_config,
        vocoder_config=vocoder_config,
        latent_dim=latent_dim,
        latents_mean=None,
        latents_std=[sigma_data / scale] * latent_dim,
        scaling_factor=sigma_data,
        **mel_config,
    )
    expected = model.state_dict()
    num_levels = len(vae_config["block_out_channels"])
    converted, used = {}, set()
    for key, target in expected.items():
        if key in VOCODER_CONSTANTS:
            converted[key] = target.clone()  # zeros / ones from the constructor
            continue
        name = source_key(key, num_levels)
        if name not in first_stage:
            raise ValueError(f"{source}: no key {name!r} (for {key!r} of the converted model)")
        value = first_stage[name]
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 4 and value.shape[2:] == (1, 1):
            value = value[:, :, 0, 0]  # 1×1 convolutions of the latent-diffusion attention → linear layers
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{source}: {folded_from.get(name, name)!r} has shape {tuple(value.shape)}, the converted model expects "
                f"{tuple(target.shape)} for {key!r} — a checkpoint of another AudioLDM size?"
            )
        converted[key] = value
        used.add(name)
    unused = sorted(set(first_stage) - used)
    if unused:
        raise ValueError(f"{source}: {folded_from.get(unused[0], unused[0])!r} is not a parameter of AudioLDM-S's VAE or vocoder")
    model.load_state_dict(converted, strict=True)
    used_source = set()
    for name in used:
        original = folded_from.get(name, name)
        used_source.add(original)
        if original != name:  # the g of a weight-normed pair: its v was used too
            used_source.add(original.replace("weight_g", "weight_v").replace("original0", "original1"))
    return AudioLDMConversion(model.eval(), scale, sorted(used_source) + ["scale_factor"], dropped)


def convert_audioldm_checkpoint(path: str | Path, trust_pickles: bool = False, **configs) -> AudioLDMConversion:
    """`audioldm-s-full.ckpt` (read with `torch.load(weights_only=True)`, memory-mapped when the file allows) →
    `AudioLDMConversion`. `configs`: vae_config, vocoder_config, mel_config as in `convert_audioldm_state_dict`."""
    path = Path(path)
    ckpt = load_pickle(path, "AudioLDM checkpoint", trust_pickles)
    state_dict = ckpt.get("state_dict") if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) else ckpt
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise ValueError(f"{path}: expected a Lightning checkpoint ({{'state_dict': {{...}}}}) or a state dict")
    return convert_audioldm_state_dict(state_dict, str(path), **configs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="audioldm-s-full.ckpt")
    parser.add_argument("output", help="folder for AutoencoderMelVocoder.save_pretrained")
    parser.add_argument("--trust-pickles", action="store_true", help="allow a full torch.load for a file from a trusted source")
    args = parser.parse_args(argv)
    result = convert_audioldm_checkpoint(args.checkpoint, trust_pickles=args.trust_pickles)
    result.model.save_pretrained(args.output)
    print(f"{len(result.converted_keys)} keys converted, {len(result.dropped_keys)} dropped, scale_factor {result.scale_factor:.6g} "
          f"-> {args.output}")


if __name__ == "__main__":
    main()
