"""`soundctm` command line: generate sound from text with a SoundCTM pipeline.

    soundctm generate "a dog barks" --steps 1 --seed 0 -o dog.wav
    soundctm generate "a dog barks" --steps 16 --nu 5 --seed 0 -o dog_refined.wav --model path/or/hub-id
"""

import argparse
import os
import sys
import time
from pathlib import Path

ENV_MODEL = "SOUNDCTM_MODEL"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def bundled_model_dir() -> Path:
    """The demo student that ships with the repository (`assets/soundctm-demo/student`)."""
    return Path(__file__).resolve().parents[2] / "assets" / "soundctm-demo" / "student"


def resolve_model(model: str | None) -> str:
    """`model`, else $SOUNDCTM_MODEL, else the bundled demo model; raises ValueError if none exists."""
    model = model or os.environ.get(ENV_MODEL)
    if model:
        return model
    bundled = bundled_model_dir()
    if (bundled / "model_index.json").is_file():
        return str(bundled)
    raise ValueError(
        f"no model given and no bundled model at {bundled}: pass --model DIR_OR_HUB_ID or set ${ENV_MODEL}"
    )


def load_pipeline(model: str | None = None, device: str | None = None, dtype: str = "fp32"):
    """Loads a SoundCTM pipeline (folder or Hub id) onto `device` (default: cuda when available, else cpu)."""
    import torch

    from .pipeline import SoundCTMPipeline

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = SoundCTMPipeline.from_pretrained(resolve_model(model), dtype=getattr(torch, DTYPES[dtype]))
    return pipe.to(device)


def write_wav(path: str | os.PathLike, audio, sampling_rate: int) -> None:
    """Writes `(channels, samples)` float audio in [-1, 1] as 16-bit PCM WAV."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T, sampling_rate, subtype="PCM_16")


def _output_paths(output: str, count: int) -> list[Path]:
    out = Path(output)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix or '.wav'}") for i in range(count)]


def cmd_generate(args) -> int:
    import torch

    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=args.quiet)
    device = pipe._execution_device
    count = args.num_waveforms
    generator = [torch.Generator(device).manual_seed(args.seed + i) for i in range(count)]
    start = time.perf_counter()
    audios = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        nu=args.nu,
        gamma=args.gamma,
        audio_length_in_s=args.duration,
        num_waveforms_per_prompt=count,
        generator=generator,
    ).audios
    elapsed = time.perf_counter() - start
    for path, audio in zip(_output_paths(args.output, count), audios):
        write_wav(path, audio, pipe.sampling_rate)
        if not args.quiet:
            print(f"wrote {path} ({audio.shape[-1] / pipe.sampling_rate:.2f} s at {pipe.sampling_rate} Hz)")
    if not args.quiet:
        kind = "student" if pipe.is_student else "teacher"
        steps = args.steps or pipe.default_num_inference_steps
        print(f"{kind}, {steps} step(s), seed {args.seed}: {elapsed:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soundctm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a WAV file from a text prompt")
    gen.add_argument("prompt", help="what the sound should be")
    gen.add_argument("-o", "--output", default="soundctm.wav", help="output WAV path (default: soundctm.wav)")
    gen.add_argument(
        "--model",
        default=None,
        help=f"pipeline folder or Hub id (default: ${ENV_MODEL}, else the bundled demo model)",
    )
    gen.add_argument("--steps", type=int, default=None, help="student: CTM jumps (default 1); teacher: Heun steps (default 40)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed gives the same sound")
    gen.add_argument(
        "--guidance-scale", "--omega", dest="guidance_scale", type=float, default=5.0,
        help="ω: the teacher's CFG scale the student was distilled with (default 5)",
    )
    gen.add_argument("--nu", type=float, default=1.0, help="ν: student guidance, Eq. 10 (default 1 = off; 5 for 16 steps)")
    gen.add_argument("--gamma", type=float, default=0.0, help="γ in [0, 1]: fresh noise between steps (default 0 = deterministic)")
    gen.add_argument("--duration", type=float, default=None, help="seconds to keep (default: the model's full length)")
    gen.add_argument("--negative-prompt", default=None, help="replaces the empty prompt in the unconditional branch")
    gen.add_argument("--num-waveforms", type=int, default=1, help="waveforms to generate, seeds seed, seed+1, ...")
    gen.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model dtype (default fp32)")
    gen.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"soundctm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
