"""`soundctm` command line: generate sound from text with a SoundCTM pipeline.

    soundctm generate "a dog barks" --steps 1 --seed 0 -o dog.wav
    soundctm generate "a dog barks" --steps 16 --nu 5 --seed 0 -o dog_refined.wav --model path/or/hub-id

Control and editing:

    soundctm generate "rain falls on a roof" --intensity-curve swell -o swell.wav        (loudness curve, 16 steps)
    soundctm generate "a dog barks" --init-audio dog.wav --strength 0.5 -o dog_edit.wav  (audio-to-audio)
    soundctm generate --bandwidth-extend phone.wav --cutoff 3000 -o full_band.wav       (bandwidth extension)

Every family generates: the SoundCTM DiT and UNet models (SoundCTMPipeline) and Stable Audio Open students and
teachers (SoundCTMStableAudioPipeline, stereo WAV). Control and editing run on the SoundCTM DiT and UNet models only.
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


def pipeline_class(model: str, **hub_kwargs):
    """The pipeline class of this package that a folder or Hub repo was saved with, read from its
    `model_index.json`: `SoundCTMStableAudioPipeline` for a Stable Audio Open student or teacher, `SoundCTMPipeline`
    for the SoundCTM DiT and UNet families (and a folder that names neither, which then fails with its own error)."""
    from .pipeline import SoundCTMPipeline
    from .pipeline_stable_audio_soundctm import SoundCTMStableAudioPipeline

    if not os.path.isdir(model) and (os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") != 1):
        raise FileNotFoundError(f"{model}: no such pipeline folder (and not a Hub id of the form owner/name)")
    from diffusers import DiffusionPipeline

    # DiffusionPipeline's reader: SoundCTMPipeline's own rewrites the class name to its own
    name = DiffusionPipeline.load_config(model, **hub_kwargs).get("_class_name")
    name = name[-1] if isinstance(name, list) else name
    return SoundCTMStableAudioPipeline if name == SoundCTMStableAudioPipeline.__name__ else SoundCTMPipeline


def load_pipeline(model: str | None = None, device: str | None = None, dtype: str = "fp32"):
    """Loads a SoundCTM pipeline (folder or Hub id) of any family onto `device` (default: cuda when available, else
    cpu)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = resolve_model(model)
    pipe = pipeline_class(model).from_pretrained(model, dtype=getattr(torch, DTYPES[dtype]))
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


def read_audio(path: str | os.PathLike, flag: str):
    """A sound file as ((channels, samples) float32, sampling rate); the pipelines mix to mono and resample."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises its own error types for missing, empty or corrupt files
        raise ValueError(f"{flag}: cannot read {path}: {err}") from None
    return data.T, rate


def _control_flags(args) -> list[str]:
    """The control and editing flags given (each runs a companion pipeline of `SoundCTMPipeline`)."""
    return [flag for flag, value in (("--intensity-curve", args.intensity_curve), ("--init-audio", args.init_audio),
                                     ("--bandwidth-extend", args.bandwidth_extend)) if value is not None]  # fmt: skip


def check_control_support(model: str, flags: list[str]) -> None:
    """Raises ValueError naming the flag and the model when `model` is of a family that the control and editing
    pipelines (subclasses of `SoundCTMPipeline`: the SoundCTM DiT and UNet families) cannot run, such as a Stable Audio
    Open model. Reads only the model's `model_index.json`, before anything is loaded."""
    from .pipeline import SoundCTMPipeline

    if not flags:
        return
    cls = pipeline_class(model)
    if cls is not SoundCTMPipeline:
        raise ValueError(
            f"{flags[0]} is not available for --model {model}: it is a Stable Audio Open model ({cls.__name__}); "
            "--intensity-curve, --init-audio and --bandwidth-extend work with the SoundCTM DiT and UNet models "
            "(SoundCTMPipeline)"
        )


def _control(pipe, args, generator):
    """Runs the editing or control pipeline the flags ask for; returns (audios, a line to report, jumps taken)."""
    chosen = _control_flags(args)
    if len(chosen) > 1:
        raise ValueError(f"use one of {', '.join(chosen)} at a time")
    common = dict(guidance_scale=args.guidance_scale, nu=args.nu, gamma=args.gamma, generator=generator)
    if args.bandwidth_extend is not None:
        from .pipeline_soundctm_bwe import SoundCTMBandwidthExtensionPipeline

        audio, rate = read_audio(args.bandwidth_extend, "--bandwidth-extend")
        pipe = SoundCTMBandwidthExtensionPipeline.from_pipe(pipe)
        audios = pipe(audio[None].repeat(len(generator), axis=0), sampling_rate=rate, prompt=args.prompt,
                      cutoff_hz=args.cutoff, num_inference_steps=args.steps or 4, negative_prompt=args.negative_prompt,
                      **common).audios  # fmt: skip
        return audios, f"bandwidth extended above {args.cutoff:g} Hz", args.steps or 4
    if args.prompt is None:
        raise ValueError("a prompt is required (only --bandwidth-extend works without one)")
    common.update(negative_prompt=args.negative_prompt, num_waveforms_per_prompt=len(generator))
    if args.init_audio is not None:
        from .pipeline_soundctm_audio2audio import SoundCTMAudioToAudioPipeline

        audio, rate = read_audio(args.init_audio, "--init-audio")
        pipe = SoundCTMAudioToAudioPipeline.from_pipe(pipe)
        audios = pipe(args.prompt, audio=audio, sampling_rate=rate, strength=args.strength,
                      num_inference_steps=args.steps, **common).audios  # fmt: skip
        return audios, f"refined {args.init_audio} at strength {args.strength:g}", args.steps or pipe.default_num_inference_steps
    import torch

    from .intensity import intensity_loss, parse_curve
    from .pipeline_soundctm_guidance import SoundCTMGuidancePipeline

    curve = parse_curve(args.intensity_curve)
    pipe = SoundCTMGuidancePipeline.from_pipe(pipe)
    ditto2 = args.intensity_method == "ditto2"
    audios = pipe(args.prompt, num_inference_steps=args.steps or 16, audio_length_in_s=args.duration,
                  intensity_curve=curve, intensity_range_db=tuple(args.intensity_range), rho=0.0 if ditto2 else args.rho,
                  noise_optimization_steps=args.ditto_iterations if ditto2 else 0, **common).audios  # fmt: skip
    loss = intensity_loss(curve, audios.shape[-1], pipe.sampling_rate, tuple(args.intensity_range))
    mse = loss(torch.from_numpy(audios)).tolist()
    return audios, f"intensity {args.intensity_method}: curve MSE {', '.join(f'{m:.1f}' for m in mse)} dB²", args.steps or 16


def cmd_generate(args) -> int:
    import torch

    if args.quiet:  # the loading bars of diffusers and transformers too
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    model = resolve_model(args.model)
    check_control_support(model, _control_flags(args))  # before loading a model that could not run them
    pipe = load_pipeline(model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=args.quiet)
    device = pipe._execution_device
    count = args.num_waveforms
    generator = [torch.Generator(device).manual_seed(args.seed + i) for i in range(count)]
    start = time.perf_counter()
    report, steps = None, args.steps or pipe.default_num_inference_steps
    if args.intensity_curve is None and args.init_audio is None and args.bandwidth_extend is None:
        if args.prompt is None:
            raise ValueError("a prompt is required (only --bandwidth-extend works without one)")
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
    else:
        audios, report, steps = _control(pipe, args, generator)
    elapsed = time.perf_counter() - start
    for path, audio in zip(_output_paths(args.output, count), audios):
        write_wav(path, audio, pipe.sampling_rate)
        if not args.quiet:
            print(f"wrote {path} ({audio.shape[-1] / pipe.sampling_rate:.2f} s at {pipe.sampling_rate} Hz)")
    if not args.quiet:
        if report:
            print(report)
        kind = "student" if pipe.is_student else "teacher"
        print(f"{kind}, {steps} step(s), seed {args.seed}: {elapsed:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soundctm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a WAV file from a text prompt")
    gen.add_argument("prompt", nargs="?", default=None, help="what the sound should be (optional with --bandwidth-extend)")
    gen.add_argument("-o", "--output", default="soundctm.wav", help="output WAV path (default: soundctm.wav)")
    gen.add_argument(
        "--model",
        default=None,
        help=f"pipeline folder or Hub id (default: ${ENV_MODEL}, else the bundled demo model)",
    )
    gen.add_argument("--steps", type=int, default=None, help="student: CTM jumps (default 1); teacher: Heun steps (default 40)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed gives the same sound")
    gen.add_argument(
        "--guidance-scale", "--omega", dest="guidance_scale", type=float, default=None,
        help="ω: the teacher's CFG scale the student was distilled with (default: the model's own; 5 for the authors' "
        "models, 2 for the bundled demo, 7 for Stable Audio Open students unless they set another)",
    )
    gen.add_argument("--nu", type=float, default=1.0, help="ν: student guidance, Eq. 10 (default 1 = off; 5 for 16 steps)")
    gen.add_argument("--gamma", type=float, default=0.0, help="γ in [0, 1]: fresh noise between steps (default 0 = deterministic)")
    gen.add_argument("--duration", type=float, default=None, help="seconds to keep (default: the model's full length)")
    gen.add_argument("--negative-prompt", default=None, help="replaces the empty prompt in the unconditional branch")
    gen.add_argument("--num-waveforms", type=int, default=1, help="waveforms to generate, seeds seed, seed+1, ...")
    gen.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model dtype (default fp32)")
    gen.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    ctl = gen.add_argument_group("control and editing (one at a time)")
    ctl.add_argument(
        "--intensity-curve", default=None, metavar="CURVE",
        help="target loudness: flat, rising, falling, swell, dip, pulses, steps, or dB values as --intensity-curve=-40,-10,-40",
    )  # fmt: skip
    ctl.add_argument("--intensity-range", type=float, nargs=2, default=[-40.0, -15.0], metavar=("LOW", "HIGH"),
                     help="dB full scale that a preset curve spans (default -40 -15)")  # fmt: skip
    ctl.add_argument("--intensity-method", choices=["guidance", "ditto2"], default="guidance",
                     help="loss-based guidance at every step (Alg. 3, default) or DITTO-2 noise optimisation")  # fmt: skip
    ctl.add_argument("--rho", type=float, default=0.1, help="loss-guidance step size ρ (default 0.1)")
    ctl.add_argument("--ditto-iterations", type=int, default=70, help="DITTO-2: Adam iterations on the initial noise (default 70)")
    ctl.add_argument("--init-audio", default=None, metavar="WAV", help="refine this sound toward the prompt (audio-to-audio)")
    ctl.add_argument("--strength", type=float, default=0.5, help="audio-to-audio: noise level in (0, 1]; 1 = text-to-audio (default 0.5)")
    ctl.add_argument("--bandwidth-extend", default=None, metavar="WAV", help="extend this low-passed recording to full band")
    ctl.add_argument("--cutoff", type=float, default=3000.0, help="bandwidth extension: observed band's upper edge in Hz (default 3000)")
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
