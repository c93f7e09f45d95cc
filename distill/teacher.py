"""The teacher φ that distillation calls, behind a small interface so that other teachers can be added.

Distillation needs only two things from a teacher, both in EDM form (Karras et al. 2022) on standardised latents:

- `denoise(z, sigma, encoder_hidden_states)`: the denoiser D_φ(z; σ, c), used by the Heun solve t → u
  (`guided_denoise` combines the conditional and unconditional calls into one batch, CFG with ω);
- `block_features(z, sigma, encoder_hidden_states)`: the outputs of its blocks at σ, each `(B, positions, channels)`,
  differentiable with respect to z: the feature extractor of d_teacher (Eq. 5).

`SoundCTMTeacher` implements them for a `SoundCTMDiTModel` in teacher mode. A teacher of another architecture (a
UNet, say) subclasses `DistillationTeacher` the same way; the student must still be a `SoundCTMDiTModel` made from
a teacher config, so `train.py` would also need that teacher's student class.
"""

import json
import os
from abc import ABC, abstractmethod

import torch

from soundctm import SoundCTMDiTModel, SoundCTMPipeline


class DistillationTeacher(ABC):
    """
    A frozen EDM-parameterised diffusion model seen by the distillation losses.

    `max_batch_size` (`int`, *optional*) caps the rows of one teacher call in `guided_denoise` (the solve's 2B rows
    are then evaluated in chunks); `None` evaluates them in one call.
    """

    sigma_data: float
    max_batch_size: int | None = None

    @abstractmethod
    def denoise(self, z: torch.Tensor, sigma: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """D_φ(z; σ, c) for z `(B, C, T)`, σ `(B,)`, c `(B, tokens, D)`; float32 `(B, C, T)`."""

    @abstractmethod
    def block_features(
        self, z: torch.Tensor, sigma: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> list[torch.Tensor]:
        """The teacher's block outputs at σ, in order, each `(B, positions, channels)`; differentiable in z."""

    @torch.no_grad()
    def guided_denoise(self, z, sigma, cond, uncond, omega) -> torch.Tensor:
        """D(∅) + ω·(D(c) − D(∅)) from the batch [z; z] with embeddings [cond; uncond]: one call, or chunks of at
        most `max_batch_size` rows."""
        z, sigma, embeds = torch.cat([z, z]), torch.cat([sigma, sigma]), torch.cat([cond, uncond])
        step = self.max_batch_size or len(z)
        denoised = torch.cat([self.denoise(z[i : i + step], sigma[i : i + step], embeds[i : i + step]) for i in range(0, len(z), step)])
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
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        self.transformer = transformer
        self.scheduler = scheduler
        self.sigma_data = float(scheduler.config.sigma_data)
        self.max_batch_size = max_batch_size

    def _forward(self, z, sigma, encoder_hidden_states, features: bool):
        scale = self.scheduler.c_in(sigma).reshape(-1, 1, 1)
        return self.transformer(
            hidden_states=(scale * z).to(self.transformer.dtype),
            timestep=self.scheduler.sigma_to_timestep(sigma),
            encoder_hidden_states=encoder_hidden_states.to(self.transformer.dtype),
            output_block_hidden_states=features,
        )

    def denoise(self, z, sigma, encoder_hidden_states):
        F = self._forward(z, sigma, encoder_hidden_states, features=False).sample.float()
        sigma = sigma.reshape(-1, 1, 1)
        return self.scheduler.c_skip(sigma) * z.float() + self.scheduler.c_out(sigma) * F

    def block_features(self, z, sigma, encoder_hidden_states):
        return list(self._forward(z, sigma, encoder_hidden_states, features=True).block_hidden_states)


def load_teacher_pipeline(name_or_path: str, revision: str | None = None, cache_dir: str | None = None) -> SoundCTMPipeline:
    """
    Loads a SoundCTM teacher pipeline (a Hub id or a folder written by `save_pretrained`) and checks that it is one:
    a `SoundCTMPipeline` whose transformer is a `SoundCTMDiTModel` in teacher mode, with an EDM scheduler config.
    Raises `ValueError` naming `--pretrained_teacher_model` otherwise.
    """
    where = f"--pretrained_teacher_model {name_or_path!r}"
    if os.path.isdir(name_or_path):
        index_path = os.path.join(name_or_path, "model_index.json")
        if not os.path.isfile(index_path):
            raise ValueError(f"{where} is a folder without model_index.json: not a diffusers pipeline folder")
        with open(index_path) as f:
            class_name = json.load(f).get("_class_name")
        class_name = class_name[-1] if isinstance(class_name, list) else class_name
        if class_name != SoundCTMPipeline.__name__:
            raise ValueError(f"{where} is a {class_name} folder; a SoundCTMPipeline teacher is needed")
    elif os.path.exists(name_or_path) or name_or_path.count("/") != 1:
        raise ValueError(f"{where} is neither a pipeline folder nor a Hub repo id ('owner/name')")
    try:
        pipe = SoundCTMPipeline.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{where} could not be loaded as a SoundCTMPipeline: {error}") from error
    if not isinstance(pipe.transformer, SoundCTMDiTModel):
        raise ValueError(f"{where}: the transformer is a {type(pipe.transformer).__name__}, not a SoundCTMDiTModel")
    if pipe.transformer.config.is_student:
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
