"""Probe: how loud are a gain-channel teacher's samples, and does CFG on the gain channel cause it?

With a gain-channel VAE, channel 0 is a log level, so CFG's extrapolation uncond + ω(cond − uncond) scales log level
differences. This probe (run on the teacher bundled before `gain_guidance_scale` existed, whose samples were louder
than the clips) showed that this is where the excess came from; the recipe now sets 1 there. It samples the
held-out prompts (one per class, seeds 0…) with Heun-40 at CFG ω on the shape channels and ω_gain on the gain
channel (the pipeline's `gain_guidance_scale`), and prints, per ω_gain, prompt adherence, share of attributes
matched, the waveforms' mean level and peak against the real clips', the share of samples at full scale, and the
re-encoded gain channel's mean. ω_gain = ω is plain CFG on every channel. On a student (`--pipeline`, `--steps`)
the value is its ν on the gain channel; `--nu` is the shape channels'.

    python -m recipes.procedural.probe_gain_guidance --teacher assets/soundctm-demo/teacher \
        --data runs/procedural/data --gain-omegas 5,1,2.5
    python -m recipes.procedural.probe_gain_guidance --pipeline assets/soundctm-demo/student \
        --data runs/procedural/data --gain-omegas 1,2,3 --steps 1,16
"""

import argparse
import json
import time

import numpy as np
import torch

from soundctm import SoundCTMPipeline

from .common import generate
from .evaluate import accuracy, attribute_accuracy, full_scale_share, mean_level_db
from .make_data import read_split
from .train_teacher import first_per_class


@torch.no_grad()
def latent_stats(vae, clips) -> dict:
    """Where a level lives in the re-encoded clips: the gain channel's mean (a frame's log level) and the shape
    channels' RMS (at most 1: the codec channels over their frame gain, less in frames near the gain floor, and
    less when the content is smeared)."""
    z = vae.encode(torch.from_numpy(np.stack(clips)).float()[:, None]).latent_dist.mean
    return {"gain_channel_mean": round(z[:, 0].mean().item(), 3), "shape_rms": round(z[:, 1:].pow(2).mean().sqrt().item(), 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", "--pipeline", dest="pipeline", required=True,
                        help="teacher or student pipeline folder whose VAE has a gain channel")  # fmt: skip
    parser.add_argument("--data", required=True, help="the recipe's data folder (its test split is used)")
    parser.add_argument("--omega", type=float, default=5.0, help="CFG scale ω on the shape channels")
    parser.add_argument("--gain-omegas", default="5,1",
                        help="guidance on the gain channel (a teacher's CFG, a student's ν), comma-separated")  # fmt: skip
    parser.add_argument("--steps", default=None, help="sampling steps, comma-separated (default: 40 / 1 for a student)")
    parser.add_argument("--nu", type=float, default=1.0, help="a student's ν on the shape channels")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = SoundCTMPipeline.from_pretrained(args.pipeline, dtype=torch.float32)
    if not pipe.vae.config.gain_channel:
        parser.error(f"--pipeline {args.pipeline}: its VAE has no gain channel (gain_channel=false)")
    steps = [int(n) for n in args.steps.split(",")] if args.steps else [pipe.default_num_inference_steps]
    pipe.set_progress_bar_config(disable=True)
    records, audio = read_split(args.data, "test")
    rows = first_per_class(records)
    prompts = [records[i]["caption"] for i in rows]
    real = [audio[i].astype(np.float32) / 32768.0 for i in rows]
    print(json.dumps({"real_level_db": round(mean_level_db(real), 1), "real_mean_peak": round(float(np.mean([np.abs(c).max() for c in real])), 3),
                      **{f"real_{k}": v for k, v in latent_stats(pipe.vae, real).items()}}))  # fmt: skip
    for num_steps, gain_omega in ((n, float(g)) for n in steps for g in args.gain_omegas.split(",")):
        start = time.time()
        clips = generate(pipe, prompts, seeds=range(len(prompts)), num_inference_steps=num_steps,
                         guidance_scale=args.omega, nu=args.nu, gain_guidance_scale=gain_omega)  # fmt: skip
        print(json.dumps({
            "steps": num_steps, "omega": args.omega, "gain_omega": gain_omega,
            "accuracy": round(accuracy(clips, prompts), 3), "attributes": round(attribute_accuracy(clips, prompts), 3),
            "level_db": round(mean_level_db(clips), 1), "mean_peak": round(float(np.mean([np.abs(c).max() for c in clips])), 3),
            "share_at_full_scale": round(full_scale_share(clips), 3),
            **latent_stats(pipe.vae, clips), "minutes": round((time.time() - start) / 60, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
