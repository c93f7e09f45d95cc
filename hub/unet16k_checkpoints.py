"""The authors' SoundCTM-UNet (16 kHz) checkpoints (Hugging Face repo `Sony/soundctm`) as diffusers models: the
student as `SoundCTMUNet2DConditionModel`, the EDM-retrained TANGO teacher as diffusers' own `UNet2DConditionModel`.

What the files hold (read from the authors' code, github.com/sony/soundctm):

- `soundctm_ckpt/030000/pytorch_model.bin`: written by `accelerator.save_state` (`ctm/train_util.py`): the state
  dict of their student `AudioDiffusionEDM` wrapper, which `ctm_inference.py` loads with a strict
  `load_state_dict`. Keys: `ctm_unet.*` (the student UNet) and `text_encoder.*` (a frozen copy of the FLAN-T5-large
  encoder, `T5EncoderModel`, copied from the teacher's file at the start of training).
- `soundctm_ckpt/030000/ema_0.999_030000.pt`: `target_model.ctm_unet.state_dict()`, the EMA (μ = 0.999) student,
  keys without a prefix. (Their `ctm_inference.py` means to load it over `pytorch_model.bin` but assigns into a
  detached state dict, so their samples come from the non-EMA weights.)
- `ckpt/teacher/pytorch_model_2_sigma_025.bin`: the teacher `AudioDiffusionEDM` state dict (`teacher_eval.py` loads
  it strictly): `unet.*` and `text_encoder.*`.

The UNet keys are diffusers' own names (`attn1.to_q`, `ff.net.0.proj`, `time_embedding.linear_1`, ...: the same in
the diffusers 0.10 that TANGO's config was written with, the 0.24–0.26 that the authors ran, and 0.42), so the key
mapping is the identity once the layout's prefix is removed; the student has four more tensors,
`s_time_embedding.linear_{1,2}.{weight,bias}`. Dropped, and returned for checking: `text_encoder.*` (the pipeline
loads FLAN-T5 itself; `compare_text_encoder` checks the copy against it). Nothing else is dropped: any other key,
a missing key or a mis-shaped tensor is a `ValueError` naming the file and the key, and a file of the wrong kind
(a student given as the teacher, ...) is refused with what it is.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from soundctm import SoundCTMUNet2DConditionModel

from .authors_checkpoints import load_pickle

AUTHORS_REPO_16K = "Sony/soundctm"
TEACHER_FILE = "ckpt/teacher/pytorch_model_2_sigma_025.bin"
STUDENT_FILE = "soundctm_ckpt/030000/pytorch_model.bin"
STUDENT_EMA_FILE = "soundctm_ckpt/030000/ema_0.999_030000.pt"

# The latent of 10.24 s: their training pads/crops every clip to int(10 · 102.4) = 1024 mel frames (hop 160 at
# 16 kHz) × 64 mel bins, and AudioLDM's VAE divides both by 4; their sampler draws (B, 8, 256, 16) noise.
LATENT_SHAPE = (256, 16)

# configs/diffusion_model_config.json of the authors' repository (TANGO's UNet, written by diffusers 0.10), the
# config of both their teacher and their student, with `sample_size` set to the latent shape above (their file
# says [32, 2], which nothing reads). Keys it does not set take diffusers' defaults, the same in their version.
TANGO_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],  # diffusers' historical name: these are numbers of heads (64 channels each)
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 8,
    "sample_size": list(LATENT_SHAPE),
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
    "upcast_attention": True,
}

STUDENT_ONLY_PREFIX = "s_time_embedding."  # the one module the student adds (s_time_proj has no parameters)
TEXT_ENCODER_PREFIX = "text_encoder."


@dataclass(frozen=True)
class Layout:
    what: str
    loader: str  # the function of this module that reads it
    unet_prefix: str  # prefix of the UNet's keys in the file
    student: bool


LAYOUTS = {
    "student": Layout("the SoundCTM student (pytorch_model.bin: 'ctm_unet.*' + 'text_encoder.*')", "load_student", "ctm_unet.", True),
    "student_ema": Layout("the SoundCTM student's EMA (ema_0.999_*.pt: the student UNet's keys, no prefix)", "load_student_ema", "", True),
    "teacher": Layout("the SoundCTM-UNet teacher (pytorch_model_2_sigma_025.bin: 'unet.*' + 'text_encoder.*')", "load_teacher", "unet.", False),
}


@dataclass
class UNet16kConversion:
    model: UNet2DConditionModel  # a SoundCTMUNet2DConditionModel for the student files
    kind: str  # a key of LAYOUTS
    converted_keys: int
    dropped_keys: list[str]
    text_encoder_state_dict: dict = field(default_factory=dict)  # the file's FLAN-T5 copy, keys of T5EncoderModel


def tango_unet_config(sample_size=LATENT_SHAPE, **overrides) -> dict:
    """TANGO's UNet config (a copy) with `sample_size` and any other key replaced."""
    config = {**TANGO_UNET_CONFIG, "sample_size": list(sample_size), **overrides}
    unknown = sorted(set(overrides) - set(UNet2DConditionModel._get_init_keys(UNet2DConditionModel)))
    if unknown:
        raise ValueError(f"{unknown} are not UNet2DConditionModel config keys")
    return config


def detect_layout(state_dict: dict) -> str | None:
    """Which of the authors' files a state dict is laid out as ("student", "student_ema", "teacher"), by its
    prefixes; "teacher_unet" for a bare UNet without the student's `s_time_embedding`; None when none fits."""
    keys = list(state_dict)
    if any(k.startswith("ctm_unet.") for k in keys):
        return "student"
    if any(k.startswith("unet.") for k in keys):
        return "teacher"
    if any(k.startswith(STUDENT_ONLY_PREFIX) for k in keys):
        return "student_ema"
    if "conv_in.weight" in state_dict:
        return "teacher_unet"
    return None


def _check_kind(state_dict: dict, kind: str, source: str) -> None:
    found = detect_layout(state_dict)
    if found == kind:
        return
    expected = LAYOUTS[kind]
    if found in LAYOUTS:
        raise ValueError(f"{source}: this is {LAYOUTS[found].what}, not {expected.what}; read it with {LAYOUTS[found].loader}")
    if found == "teacher_unet" and kind == "student_ema":
        raise ValueError(
            f"{source}: UNet weights without the student's '{STUDENT_ONLY_PREFIX}*': a teacher UNet, not {expected.what}"
        )
    first = next(iter(state_dict), None)
    raise ValueError(f"{source}: not {expected.what} (first key {first!r})")


def _unet_state_dict(state_dict: dict, kind: str, source: str) -> tuple[dict, list[str], dict]:
    """(UNet state dict without the layout's prefix, dropped keys, text-encoder copy)."""
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError(f"{source}: expected a non-empty state dict (a dict of tensors), got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: {key!r} is not a tensor entry of a state dict ({type(value).__name__})")
    if all(k.startswith("module.") for k in state_dict):  # saved through a DataParallel / DDP wrapper
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    _check_kind(state_dict, kind, source)
    prefix = LAYOUTS[kind].unet_prefix
    unet, dropped, text_encoder = {}, [], {}
    for key, value in state_dict.items():
        if prefix and key.startswith(TEXT_ENCODER_PREFIX):
            dropped.append(key)
            text_encoder[key[len(TEXT_ENCODER_PREFIX):]] = value
        elif key.startswith(prefix):
            unet[key[len(prefix):]] = value
        else:
            raise ValueError(f"{source}: {key!r} is neither '{prefix}*' nor '{TEXT_ENCODER_PREFIX}*': not {LAYOUTS[kind].what}")
    return unet, dropped, text_encoder


def _load_strict(model: torch.nn.Module, unet: dict, prefix: str, source: str) -> None:
    expected = model.state_dict()
    unexpected = [k for k in unet if k not in expected]
    if unexpected:
        raise ValueError(
            f"{source}: {prefix + unexpected[0]!r} is not a parameter of {type(model).__name__} with this config "
            f"({len(unexpected)} such keys)"
        )
    missing = [k for k in expected if k not in unet]
    if missing:
        raise ValueError(f"{source}: no {prefix + missing[0]!r} ({len(missing)} tensors of the model missing: a truncated file?)")
    for key, value in unet.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{source}: {prefix + key!r} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)} "
                "(a checkpoint of another UNet config?)"
            )
    model.load_state_dict(unet, strict=True)


def _convert(state_dict: dict, kind: str, config: dict | None, source: str) -> UNet16kConversion:
    unet, dropped, text_encoder = _unet_state_dict(state_dict, kind, source)
    layout = LAYOUTS[kind]
    config = dict(config or TANGO_UNET_CONFIG)
    model = SoundCTMUNet2DConditionModel(**config) if layout.student else UNet2DConditionModel(**config)
    _load_strict(model, unet, layout.unet_prefix, source)
    return UNet16kConversion(model.eval(), kind, len(unet), dropped, text_encoder)


# ------------------------------------------------------------------------------------------- from state dicts
def student_from_state_dict(state_dict: dict, config: dict | None = None, source: str = "student state dict") -> UNet16kConversion:
    """The student of a `pytorch_model.bin` state dict ('ctm_unet.*' + 'text_encoder.*'). `config`: the UNet's
    (default `TANGO_UNET_CONFIG`); `source` names the input in errors."""
    return _convert(state_dict, "student", config, source)


def student_ema_from_state_dict(state_dict: dict, config: dict | None = None, source: str = "student EMA state dict") -> UNet16kConversion:
    """The student of an `ema_0.999_*.pt` state dict (the student UNet's keys, no prefix)."""
    return _convert(state_dict, "student_ema", config, source)


def teacher_from_state_dict(state_dict: dict, config: dict | None = None, source: str = "teacher state dict") -> UNet16kConversion:
    """The teacher (diffusers' `UNet2DConditionModel`) of a `pytorch_model_2_sigma_025.bin` state dict
    ('unet.*' + 'text_encoder.*')."""
    return _convert(state_dict, "teacher", config, source)


# ------------------------------------------------------------------------------------------- from files
def _read(path, what: str, trust_pickles: bool) -> dict:
    return load_pickle(Path(path), what, trust_pickles)  # torch.load(weights_only=True, mmap=True for zip files)


def load_student(path, config: dict | None = None, trust_pickles: bool = False) -> UNet16kConversion:
    """The student from the authors' `soundctm_ckpt/<step>/pytorch_model.bin`."""
    return student_from_state_dict(_read(path, "SoundCTM student checkpoint", trust_pickles), config, str(path))


def load_student_ema(path, config: dict | None = None, trust_pickles: bool = False) -> UNet16kConversion:
    """The EMA student from the authors' `soundctm_ckpt/<step>/ema_0.999_<step>.pt`."""
    return student_ema_from_state_dict(_read(path, "SoundCTM student EMA checkpoint", trust_pickles), config, str(path))


def load_teacher(path, config: dict | None = None, trust_pickles: bool = False) -> UNet16kConversion:
    """The teacher from the authors' `ckpt/teacher/pytorch_model_2_sigma_025.bin`."""
    return teacher_from_state_dict(_read(path, "SoundCTM-UNet teacher checkpoint", trust_pickles), config, str(path))


def compare_text_encoder(text_encoder_state_dict: dict, text_encoder: torch.nn.Module, source: str = "checkpoint") -> tuple[bool, float]:
    """Whether the FLAN-T5 copy inside a checkpoint (`UNet16kConversion.text_encoder_state_dict`) is the text
    encoder the pipeline will use (a transformers `T5EncoderModel`). Returns (same keys and values, max |Δ|); a
    key the model does not have, or one of another shape, is a `ValueError` naming it."""
    reference = text_encoder.state_dict()
    if not text_encoder_state_dict:
        raise ValueError(f"{source}: holds no '{TEXT_ENCODER_PREFIX}*' copy to compare")
    diff = 0.0
    for key, value in text_encoder_state_dict.items():
        if key not in reference:
            raise ValueError(f"{source}: '{TEXT_ENCODER_PREFIX}{key}' is not a tensor of {type(text_encoder).__name__}")
        if tuple(value.shape) != tuple(reference[key].shape):
            raise ValueError(
                f"{source}: '{TEXT_ENCODER_PREFIX}{key}' has shape {tuple(value.shape)}, the text encoder's is "
                f"{tuple(reference[key].shape)}: another model"
            )
        diff = max(diff, float((value.float() - reference[key].float()).abs().max()))
    same_keys = set(text_encoder_state_dict) >= {k for k in reference if not k.endswith("position_ids")}
    return same_keys and diff == 0.0, diff
