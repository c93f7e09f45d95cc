"""The teacher φ that distillation calls, behind a small interface so that other teachers can be added.

Distillation needs only two things from a teacher, both in EDM form (Karras et al. 2022) on standardised latents:

- `denoise(z, sigma, encoder_hidden_states)`: the denoiser D_φ(z; σ, c), used by the Heun solve t → u
  (`guided_denoise` combines the conditional and unconditional calls into one batch, CFG with ω);
- `block_features(z, sigma, encoder_hidden_states)`: the outputs of its blocks at σ, each `(B, positions, channels)`,
  differentiable with respect to z: the feature extractor of d_teacher (Eq. 5).

`SoundCTMTeacher` implements them for a `SoundCTMDiTModel` in teacher mode (the 44.1 kHz family), `UNetTeacher` for
diffusers' `UNet2DConditionModel` (the paper's 16 kHz SoundCTM-UNet teacher: TANGO's UNet on mel-VAE latents with
FLAN-T5 token states and their attention mask), `StableAudioTeacher` for diffusers' `StableAudioDiTModel` (Stable Audio
Open: v-prediction with EDM preconditioning, T5 text plus seconds-start/seconds-end conditioning). `make_teacher` picks
the adapter and `make_student` the student class of the family (the teacher plus the s and ω inputs, from the teacher's
weights).
"""

import json
import os
from abc import ABC, abstractmethod

import torch
from diffusers import DiffusionPipeline, StableAudioDiTModel, UNet2DConditionModel

from soundctm import (
    AutoencoderOobleckSoundCTM,
    CTMScheduler,
    EDMHeunScheduler,
    SoundCTMDiTModel,
    SoundCTMPipeline,
    SoundCTMStableAudioDiTModel,
    SoundCTMStableAudioPipeline,
    SoundCTMUNet2DConditionModel,
)
from soundctm.pipeline import concat_conditioning
from soundctm.stable_audio_soundctm import stable_audio_global_states, stable_audio_rotary_embedding

TEACHER_CLASSES = (SoundCTMDiTModel, UNet2DConditionModel, StableAudioDiTModel)
TEACHER_FAMILIES = (
    "SoundCTMDiTModel (44.1 kHz SoundCTM-DiT), diffusers' UNet2DConditionModel (16 kHz SoundCTM-UNet) and "
    "diffusers' StableAudioDiTModel (Stable Audio Open)"
)


class DistillationTeacher(ABC):
    """
    A frozen EDM-parameterised diffusion model seen by the distillation losses.

    `max_batch_size` (`int`, *optional*) caps the rows of one teacher call in `guided_denoise` (the solve's 2B rows
    are then evaluated in chunks); `None` evaluates them in one call.
    """

    sigma_data: float
    max_batch_size: int | None = None

    def __init__(self, scheduler, max_batch_size: int | None = None):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        self.scheduler = scheduler
        self.sigma_data = float(scheduler.config.sigma_data)
        self.max_batch_size = max_batch_size

    @abstractmethod
    def denoise(self, z: torch.Tensor, sigma: torch.Tensor, encoder_hidden_states: torch.Tensor, encoder_attention_mask=None) -> torch.Tensor:
        """D_φ(z; σ, c) for z `(B, C, ...)` (a DiT's `(B, C, T)`, a UNet's `(B, C, T, F)`), σ `(B,)`, c
        `(B, tokens, D)` with its `(B, tokens)` mask (None: every token); float32, shaped as z."""

    @abstractmethod
    def block_features(
        self, z: torch.Tensor, sigma: torch.Tensor, encoder_hidden_states: torch.Tensor, encoder_attention_mask=None
    ) -> list[torch.Tensor]:
        """The teacher's block outputs at σ, in order, each `(B, positions, channels)`; differentiable in z."""

    @torch.no_grad()
    def guided_denoise(self, z, sigma, cond, uncond, omega, cond_mask=None, uncond_mask=None) -> torch.Tensor:
        """D(∅) + ω·(D(c) − D(∅)) from the batch [z; z] with embeddings [cond; uncond] (token sequences of different
        lengths padded under the mask): one call, or chunks of at most `max_batch_size` rows."""
        embeds, mask = concat_conditioning((cond, cond_mask), (uncond, uncond_mask))
        z, sigma = torch.cat([z, z]), torch.cat([sigma, sigma])
        step = self.max_batch_size or len(z)
        denoised = torch.cat(
            [
                self.denoise(z[i : i + step], sigma[i : i + step], embeds[i : i + step], None if mask is None else mask[i : i + step])
                for i in range(0, len(z), step)
            ]
        )
        d_cond, d_uncond = denoised.chunk(2)
        omega = omega.reshape(-1, *([1] * (z.ndim - 1))).to(d_cond.dtype)
        return d_uncond + omega * (d_cond - d_uncond)


class SoundCTMTeacher(DistillationTeacher):
    """
    A `SoundCTMDiTModel` teacher (`is_student=False`): D = c_skip(σ)·z + c_out(σ)·F(c_in(σ)·z, c_noise(σ), c), and
    d_teacher features = the output tokens of every DiT block, the global token included, from ONE forward pass
    with the blocks chained (the authors' feature code applies every block to the block-0 input instead).
    """

    def __init__(self, transformer: SoundCTMDiTModel, scheduler, max_batch_size: int | None = None):
        if transformer.config.is_student:
            raise ValueError("the teacher transformer must be in teacher mode (is_student=False)")
        super().__init__(scheduler, max_batch_size)
        self.transformer = transformer

    def _forward(self, z, sigma, encoder_hidden_states, encoder_attention_mask, features: bool):
        scale = self.scheduler.c_in(sigma).reshape(-1, 1, 1)
        return self.transformer(
            hidden_states=(scale * z).to(self.transformer.dtype),
            timestep=self.scheduler.sigma_to_timestep(sigma),
            encoder_hidden_states=encoder_hidden_states.to(self.transformer.dtype),
            encoder_attention_mask=encoder_attention_mask,
            output_block_hidden_states=features,
        )

    def denoise(self, z, sigma, encoder_hidden_states, encoder_attention_mask=None):
        F = self._forward(z, sigma, encoder_hidden_states, encoder_attention_mask, features=False).sample.float()
        sigma = sigma.reshape(-1, 1, 1)
        return self.scheduler.c_skip(sigma) * z.float() + self.scheduler.c_out(sigma) * F

    def block_features(self, z, sigma, encoder_hidden_states, encoder_attention_mask=None):
        return list(self._forward(z, sigma, encoder_hidden_states, encoder_attention_mask, features=True).block_hidden_states)


def block_outputs(blocks, run) -> list[torch.Tensor]:
    """The outputs of `blocks` (the first element of a tuple output) during `run()`, in call order; differentiable."""
    outputs = []

    def keep(module, inputs, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [block.register_forward_hook(keep) for block in blocks if block is not None]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return outputs


class UNetTeacher(DistillationTeacher):
    """
    A diffusers `UNet2DConditionModel` EDM teacher (the 16 kHz SoundCTM-UNet's): D = c_skip(σ)·z + c_out(σ)·F(c_in(σ)·z,
    c_noise(σ), c, mask), and d_teacher features = the output of every down block, the mid block and every up block
    (the authors' `get_feature_full`, `unet_mode full`), each `(B, C, H, W)` map read as `(B, H·W, C)`, from one
    forward. d_teacher then normalises each position over channels and sums the squared differences over channels
    (Eq. 5, as for the DiT); the authors' code averages over channels instead, a constant factor per block.
    """

    def __init__(self, unet: UNet2DConditionModel, scheduler, max_batch_size: int | None = None):
        if not isinstance(unet, UNet2DConditionModel) or unet.config.get("is_student", False):
            raise ValueError(f"the teacher must be a diffusers UNet2DConditionModel (not a student), got {type(unet).__name__}")
        super().__init__(scheduler, max_batch_size)
        self.unet = unet

    def _forward(self, z, sigma, encoder_hidden_states, encoder_attention_mask):
        scale = self.scheduler.c_in(sigma).reshape(-1, *([1] * (z.ndim - 1)))
        return self.unet(
            (scale * z).to(self.unet.dtype),
            self.scheduler.sigma_to_timestep(sigma),
            encoder_hidden_states.to(self.unet.dtype),
            encoder_attention_mask=encoder_attention_mask,
        ).sample

    def denoise(self, z, sigma, encoder_hidden_states, encoder_attention_mask=None):
        F = self._forward(z, sigma, encoder_hidden_states, encoder_attention_mask).float()
        sigma = sigma.reshape(-1, *([1] * (z.ndim - 1)))
        return self.scheduler.c_skip(sigma) * z.float() + self.scheduler.c_out(sigma) * F

    def block_features(self, z, sigma, encoder_hidden_states, encoder_attention_mask=None):
        blocks = [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]  # a down block returns (hidden, residuals)
        maps = block_outputs(blocks, lambda: self._forward(z, sigma, encoder_hidden_states, encoder_attention_mask))
        return [m.flatten(2).transpose(1, 2) for m in maps]


class StableAudioTeacher(DistillationTeacher):
    """
    A diffusers `StableAudioDiTModel` teacher (Stable Audio Open), with the preconditioning of its
    `CosineDPMSolverMultistepScheduler`: v-prediction, D = c_skip(σ)·z + c_out(σ)·F(c_in(σ)·z, c_noise(σ), c) with
    c_skip = σ_d²/(σ² + σ_d²), c_out = −σ·σ_d/√(σ² + σ_d²) (negative for v-prediction), c_in = 1/√(σ² + σ_d²) and
    c_noise = atan(σ)·2/π (not `CTMScheduler.sigma_to_timestep`'s ln(σ)/4); σ_d is the `sigma_data` of the scheduler
    given (1 for Stable Audio Open). Only `scheduler.config.sigma_data` is read from the scheduler.

    Conditioning, in the interface's one `encoder_hidden_states` tensor:

    - `encoder_hidden_states` `(B, L + 2, D)`: `StableAudioPipeline`'s cross-attention sequence, i.e. the projected T5
      states of the prompt padded to the tokenizer's `model_max_length` (L tokens), then the seconds-start token, then
      the seconds-end token (`StableAudioProjectionModel`'s outputs; `stable_audio_conditioning` builds it);
    - the DiT's `global_hidden_states` `(B, 1, 2·D)` is derived from the LAST TWO tokens, `cat([start, end], dim=2)`,
      whatever the mask says;
    - `encoder_attention_mask` `(B, L + 2)` (None: all True) is the text mask followed by True, True. Tokens where it
      is False are ZEROED in the cross-attention sequence and still attended: the pipeline passes no attention mask to
      the DiT (neither `attention_mask` nor `encoder_attention_mask`) and instead multiplies the padded text states by
      the tokenizer mask, and for classifier-free guidance without a negative prompt it uses an all-zero
      cross-attention sequence with the conditional seconds as global states. That null condition is the same
      `encoder_hidden_states` with an all-False mask (`null_conditioning`).

    Rows of one call must have the same number of tokens (the pipeline pads every prompt to `model_max_length`), so
    `guided_denoise` refuses conditional and unconditional sequences of different lengths.

    d_teacher features = the output of every block of `transformer_blocks`, `(B, 1 + T, inner_dim)` with the global
    token first, from one forward (forward hooks).
    """

    def __init__(
        self, transformer: StableAudioDiTModel, scheduler, max_batch_size: int | None = None, prediction_type: str = "v_prediction"
    ):
        if not isinstance(transformer, StableAudioDiTModel) or transformer.config.get("is_student", False):
            raise ValueError(
                f"the teacher must be a diffusers StableAudioDiTModel (not a student), got {type(transformer).__name__}"
            )
        if prediction_type not in ("v_prediction", "epsilon"):
            raise ValueError(f"prediction_type must be 'v_prediction' or 'epsilon', got {prediction_type!r}")
        super().__init__(scheduler, max_batch_size)
        self.transformer = transformer
        self.prediction_type = prediction_type
        # c_in, c_skip, c_out and c_noise of Stable Audio's scheduler, from the package's shared EDM preconditioning.
        self.preconditioning = CTMScheduler(
            sigma_data=self.sigma_data, prediction_type=prediction_type, noise_conditioning="atan"
        )
        self._rotary = {}

    @staticmethod
    def edm_settings(scheduler_config) -> dict:
        """The σ_min, σ_max, σ_data and ρ to build `CTMScheduler` from a Stable Audio scheduler config (a
        `CosineDPMSolverMultistepScheduler`'s: `sigma_min`, `sigma_max`, `sigma_data`, `rho`; Stable Audio Open's are
        0.3, 500, 1 and 7, and its sampler uses the exponential σ schedule, for which ρ plays no part)."""
        defaults = dict(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, rho=7.0)
        return {k: float(scheduler_config.get(k, v)) for k, v in defaults.items()}

    @staticmethod
    def null_conditioning(encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's unconditional input without a negative prompt: an all-zero cross-attention sequence and the
        seconds of `encoder_hidden_states` as global states, i.e. `(encoder_hidden_states, all-False mask)`."""
        mask = torch.zeros(encoder_hidden_states.shape[:2], dtype=torch.bool, device=encoder_hidden_states.device)
        return encoder_hidden_states, mask

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.preconditioning.sigma_to_timestep(sigma)

    def _rotary_embedding(self, frames: int, device):
        key = (frames, str(device))
        if key not in self._rotary:  # as the pipeline: over the global token and the latent frames
            cos, sin = stable_audio_rotary_embedding(self.transformer.config.attention_head_dim, frames)
            self._rotary[key] = (cos.to(device), sin.to(device))
        return self._rotary[key]

    def _forward(self, z, sigma, encoder_hidden_states, encoder_attention_mask):
        if encoder_hidden_states.shape[1] < 2:
            raise ValueError("encoder_hidden_states must end with the seconds-start and seconds-end tokens")
        dtype = self.transformer.dtype
        sigma = sigma.float().reshape(-1)
        c_in = self.preconditioning.c_in(sigma)
        global_states = stable_audio_global_states(encoder_hidden_states)
        if encoder_attention_mask is not None:
            keep = encoder_attention_mask.to(encoder_hidden_states.device).unsqueeze(-1)
            encoder_hidden_states = encoder_hidden_states * keep.to(encoder_hidden_states.dtype)
        return self.transformer(
            (c_in.reshape(-1, *([1] * (z.ndim - 1))) * z.float()).to(dtype),
            self.c_noise(sigma),
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            global_hidden_states=global_states.to(dtype),
            rotary_embedding=self._rotary_embedding(z.shape[-1], z.device),
        ).sample

    def denoise(self, z, sigma, encoder_hidden_states, encoder_attention_mask=None):
        F = self._forward(z, sigma, encoder_hidden_states, encoder_attention_mask).float()
        sigma = sigma.float().reshape(-1, *([1] * (z.ndim - 1)))
        return self.preconditioning.c_skip(sigma) * z.float() + self.preconditioning.c_out(sigma) * F

    def block_features(self, z, sigma, encoder_hidden_states, encoder_attention_mask=None):
        return block_outputs(
            self.transformer.transformer_blocks, lambda: self._forward(z, sigma, encoder_hidden_states, encoder_attention_mask)
        )

    @torch.no_grad()
    def guided_denoise(self, z, sigma, cond, uncond, omega, cond_mask=None, uncond_mask=None):
        if cond.shape[1] != uncond.shape[1]:
            raise ValueError(
                f"Stable Audio conditioning must have one length for the conditional and unconditional rows "
                "(the pipeline pads every prompt to the tokenizer's model_max_length), "
                f"got {cond.shape[1]} and {uncond.shape[1]}"
            )
        return super().guided_denoise(z, sigma, cond, uncond, omega, cond_mask, uncond_mask)


@torch.no_grad()
def stable_audio_conditioning(pipe, prompts: list[str], audio_start_in_s, audio_end_in_s, device=None):
    """
    `StableAudioTeacher`'s `(encoder_hidden_states, encoder_attention_mask)` for `prompts`, as a diffusers
    `StableAudioPipeline` builds its conditional input: the projected T5 states (padded to the tokenizer's
    `model_max_length`, padding zeroed), then the seconds-start and seconds-end tokens; the mask is the tokenizer's
    followed by True, True. `audio_start_in_s`/`audio_end_in_s`: a number or one per prompt. The negative-prompt
    input is this function of the negative prompts; the pipeline's default null input is
    `StableAudioTeacher.null_conditioning` of the conditional one.
    """
    device = device or pipe._execution_device
    tokenizer = pipe.tokenizer
    text = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    embeds = pipe.encode_prompt(prompts, device, False)  # projected, padding zeroed
    start, end = pipe.encode_duration(audio_start_in_s, audio_end_in_s, device, False, len(prompts))
    seconds_mask = torch.ones(len(prompts), 2, dtype=torch.bool, device=device)
    mask = torch.cat([text.attention_mask.to(device).bool(), seconds_mask], dim=1)
    return torch.cat([embeds, start, end], dim=1), mask


def teacher_ctm_scheduler(teacher_scheduler_config) -> CTMScheduler:
    """The CTM scheduler of the teacher's family: its σ range, σ_data and preconditioning (Stable Audio Open: σ in
    [0.3, 500], σ_data 1, v-prediction, c_noise = atan(σ)·2/π)."""
    config = teacher_scheduler_config
    return CTMScheduler(
        sigma_min=config.sigma_min,
        sigma_max=config.sigma_max,
        sigma_data=config.sigma_data,
        rho=config.rho,
        prediction_type=config.get("prediction_type", "epsilon"),
        noise_conditioning=config.get("noise_conditioning", "edm"),
    )


def make_teacher(transformer, scheduler, max_batch_size: int | None = None) -> DistillationTeacher:
    """The adapter of the teacher's family: `SoundCTMTeacher` for a SoundCTM DiT, `UNetTeacher` for a
    UNet2DConditionModel, `StableAudioTeacher` for a StableAudioDiTModel; `ValueError` naming the families otherwise."""
    if isinstance(transformer, SoundCTMDiTModel):
        return SoundCTMTeacher(transformer, scheduler, max_batch_size)
    if isinstance(transformer, StableAudioDiTModel):
        return StableAudioTeacher(transformer, scheduler, max_batch_size)  # v-prediction, Stable Audio Open's
    if isinstance(transformer, UNet2DConditionModel):
        return UNetTeacher(transformer, scheduler, max_batch_size)
    raise ValueError(f"the teacher is a {type(transformer).__name__}; the supported teacher families are {TEACHER_FAMILIES}")


def make_student(teacher_transformer, sample_size: int, seed: int = 0):
    """
    The student θ of the teacher's family, from the teacher's weights in fp32, generating `sample_size` latent
    frames: a `SoundCTMDiTModel(is_student=True)` or a `SoundCTMStableAudioDiTModel` (the s and ω inputs add no
    parameters), or a `SoundCTMUNet2DConditionModel` (the UNet plus `s_time_embedding`, its one new module,
    default-initialised from torch's RNG seeded with `seed`, so that a run, and a resumed one, starts from the same
    student).
    """
    if isinstance(teacher_transformer, SoundCTMDiTModel):
        student = SoundCTMDiTModel.from_config(teacher_transformer.config, is_student=True, sample_size=sample_size)
        student.load_state_dict({k: v.float() for k, v in teacher_transformer.state_dict().items()})
        return student
    if isinstance(teacher_transformer, StableAudioDiTModel):
        return SoundCTMStableAudioDiTModel.from_teacher(teacher_transformer, sample_size=sample_size).float()
    bins = list(teacher_transformer.config.sample_size)[1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SoundCTMUNet2DConditionModel.from_teacher(teacher_transformer, sample_size=[sample_size, *bins]).float()


def student_last_layer(student) -> torch.nn.Module:
    """θ_L of λ_DSM (Appendix D): the layer that outputs F (Stable Audio's 1×1 `postprocess_conv` adds its input
    back, which does not change the gradient of its weight)."""
    if isinstance(student, (SoundCTMDiTModel, StableAudioDiTModel)):
        return student.postprocess_conv
    return student.conv_out


TEACHER_PIPELINES = ("SoundCTMPipeline", "SoundCTMStableAudioPipeline", "StableAudioPipeline")


def stable_audio_teacher_pipeline(name_or_path: str, revision: str | None = None, cache_dir: str | None = None) -> SoundCTMStableAudioPipeline:
    """
    Stable Audio Open (`stabilityai/stable-audio-open-1.0`, or any `StableAudioPipeline` folder) as a SoundCTM
    teacher pipeline: its DiT, T5, projection model and tokenizer as they are, its VAE as `AutoencoderOobleckSoundCTM`
    (the same weights), and `EDMHeunScheduler` with the σ range, σ_data and prediction type of its
    `CosineDPMSolverMultistepScheduler` config and c_noise = atan(σ)·2/π. Components are loaded one by one, so the
    `torchsde` package that Stable Audio's own scheduler imports is not needed.
    """
    from diffusers import StableAudioProjectionModel
    from transformers import AutoTokenizer, T5EncoderModel

    kwargs = {"revision": revision, "cache_dir": cache_dir}
    scheduler_config = EDMHeunScheduler.load_config(name_or_path, subfolder="scheduler", **kwargs)
    scheduler = EDMHeunScheduler(
        **StableAudioTeacher.edm_settings(scheduler_config),
        prediction_type=scheduler_config.get("prediction_type", "v_prediction"),
        noise_conditioning="atan",
    )
    return SoundCTMStableAudioPipeline(
        vae=AutoencoderOobleckSoundCTM.from_pretrained(name_or_path, subfolder="vae", **kwargs),
        text_encoder=T5EncoderModel.from_pretrained(name_or_path, subfolder="text_encoder", **kwargs),
        projection_model=StableAudioProjectionModel.from_pretrained(name_or_path, subfolder="projection_model", **kwargs),
        tokenizer=AutoTokenizer.from_pretrained(name_or_path, subfolder="tokenizer", **kwargs),
        transformer=StableAudioDiTModel.from_pretrained(name_or_path, subfolder="transformer", **kwargs),
        scheduler=scheduler,
    )


def load_teacher_pipeline(name_or_path: str, revision: str | None = None, cache_dir: str | None = None) -> SoundCTMPipeline:
    """
    Loads a teacher pipeline (a Hub id or a local folder) and checks that it is one; the family is read from its
    `model_index.json`: a `SoundCTMPipeline` teacher (SoundCTM DiT or UNet), a `SoundCTMStableAudioPipeline` teacher,
    or a diffusers `StableAudioPipeline` (Stable Audio Open, `stable_audio_teacher_pipeline`). Its transformer must be a
    teacher (not a student) with an EDM scheduler config. Raises `ValueError` naming `--pretrained_teacher_model`
    otherwise.
    """
    where = f"--pretrained_teacher_model {name_or_path!r}"
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, "model_index.json")):
            raise ValueError(f"{where} is a folder without model_index.json: not a diffusers pipeline folder")
    elif os.path.exists(name_or_path) or name_or_path.count("/") != 1:
        raise ValueError(f"{where} is neither a pipeline folder nor a Hub repo id ('owner/name')")
    try:
        # DiffusionPipeline's reader: SoundCTMPipeline's own rewrites the class name to its own
        index = DiffusionPipeline.load_config(name_or_path, revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: could not read its model_index.json: {error}") from error
    class_name = index.get("_class_name")
    class_name = class_name[-1] if isinstance(class_name, list) else class_name
    if class_name not in TEACHER_PIPELINES:
        raise ValueError(
            f"{where} is a {class_name} folder; the supported teacher pipelines are {', '.join(TEACHER_PIPELINES)} "
            f"(teacher families: {TEACHER_FAMILIES})"
        )
    try:
        if class_name == "StableAudioPipeline":
            pipe = stable_audio_teacher_pipeline(name_or_path, revision, cache_dir)
        else:
            pipeline_class = SoundCTMStableAudioPipeline if class_name == "SoundCTMStableAudioPipeline" else SoundCTMPipeline
            pipe = pipeline_class.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{where} could not be loaded as a {class_name}: {error}") from error
    if not isinstance(pipe.transformer, TEACHER_CLASSES):
        raise ValueError(
            f"{where}: the transformer is a {type(pipe.transformer).__name__}; the supported teacher families are "
            f"{TEACHER_FAMILIES}"
        )
    if pipe.transformer.config.get("is_student", False):
        raise ValueError(
            f"{where} is a SoundCTM student (transformer.config.is_student=True); distillation needs its teacher"
        )
    missing = [k for k in ("sigma_min", "sigma_max", "sigma_data", "rho") if k not in pipe.scheduler.config]
    if missing:
        raise ValueError(f"{where}: the scheduler ({type(pipe.scheduler).__name__}) has no EDM settings {missing}")
    for name in ("encode", "standardize", "hop_length"):
        if not hasattr(pipe.vae, name):
            raise ValueError(f"{where}: the VAE ({type(pipe.vae).__name__}) has no `{name}`")
    return pipe
