"""The full-size 1-step latency and batch throughput of SoundCTM-DiT on an accelerator, by what makes it fast.

One script for the first session that has a GPU (about 3-5 minutes on an H100): random weights of the real sizes
(dit_v2: 1.05 B parameters, the paper's 63 M Gaussian DAC, a roberta-base-sized CLAP text encoder), 10 s of audio,
text to waveform through `SoundCTMPipeline`. Rows, each against the fp32 eager row measured in the same process:

  fp32 eager, ν = 5          the authors' way: the conditional and ∅ halves in one batch of 2
  fp32 eager, ν = 1          our ν = 1 path: the ∅ half skipped
  bf16 / fp16 eager, ν = 1   half precision (SDPA picks the flash / memory-efficient kernels)
  + compile                  torch.compile (inductor, default mode) of the DiT and the decoder
  + compile, CUDA graphs     mode "reduce-overhead": CUDA graphs replay the compiled kernels (no autotuning, whose
                             kernel search would take longer than this script's 5 minutes for a 1 B DiT)

Every row's latency is the median of `--repeats` calls (after warm-up, synchronised), and its waveform is compared
with the fp32 eager ν = 1 row's (max |Δ|: the fast paths must give the same sound within their precision). The
throughput rows generate `--batch` clips in one call. Peak accelerator memory is reported per row.

    python benchmarks/bench_gpu.py                              # on the GPU: the table (markdown)
    python benchmarks/bench_gpu.py --json runs/gpu.json
    python benchmarks/bench_gpu.py --device cpu --tiny --compile-backend eager   # checks that everything runs
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_pipeline  # noqa: E402

from soundctm import SoundCTMPipeline  # noqa: E402

PROMPT = bench_pipeline.PROMPT
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(tiny: bool) -> SoundCTMPipeline:
    """Random weights of dit_v2's sizes (bench_pipeline.py's model), or tiny ones; fixed seed."""
    if not tiny:
        return bench_pipeline.build("dit_v2")
    from tiny_models import tiny_pipeline

    torch.manual_seed(0)
    pipe = tiny_pipeline(student=True, text_embedding="pooled")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency(call, device: torch.device, repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        call()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def compile_components(pipe: SoundCTMPipeline, mode: str | None, backend: str) -> None:
    """torch.compile of the DiT and the decoder, in place (the pipeline keeps its modules and configs)."""
    kwargs = {"backend": backend} if backend != "inductor" else {"backend": backend, "mode": mode}
    pipe.transformer.compile(**kwargs)
    pipe.vae.decoder.compile(**kwargs)


def run(args) -> dict:
    device = torch.device(args.device)
    base = build(args.tiny)
    samples = base.transformer.config.sample_size * base.vae.hop_length
    generator = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
    noise = torch.randn(1, base.transformer.config.in_channels, base.transformer.config.sample_size,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip

    rows, reference = [], None
    settings = [("fp32", "eager", 5.0), ("fp32", "eager", 1.0)]
    settings += [(d, "eager", 1.0) for d in args.dtypes if d != "fp32"]
    if args.compile:
        settings += [(d, "compile", 1.0) for d in args.dtypes if d != "fp32" or args.dtypes == ["fp32"]]
        if device.type == "cuda":
            settings += [(d, "compile + CUDA graphs", 1.0) for d in args.dtypes if d != "fp32"]
    for dtype_name, mode, nu in settings:
        pipe = build(args.tiny).to(device=device, dtype=DTYPES[dtype_name])
        if mode != "eager":
            compile_components(pipe, "reduce-overhead" if "CUDA graphs" in mode else "default", args.compile_backend)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        one = lambda b=1: pipe([PROMPT] * b, num_inference_steps=1, nu=nu, generator=generator(),  # noqa: E731
                               latents=noise.repeat(b, 1, 1).to(device), output_type="pt").audios
        with torch.inference_mode():
            seconds, times = latency(one, device, args.repeats, args.warmup)
            audio = one().float().cpu()
            batch_s, _ = latency(lambda: one(args.batch), device, max(1, args.repeats // 2), 1)
        row = dict(dtype=dtype_name, mode=mode, nu=nu, latency_s=seconds, latency_all_s=times,
                   clips_per_s=args.batch / batch_s, batch=args.batch, samples=samples)  # fmt: skip
        if device.type == "cuda":
            row["peak_memory_GB"] = torch.cuda.max_memory_allocated(device) / 1e9
        if dtype_name == "fp32" and mode == "eager" and nu == 1.0:
            reference = audio
        rows.append(row)
        row["audio"] = audio
        print(f"{dtype_name:5s} {mode:22s} ν {nu:g}: {seconds * 1e3:9.2f} ms, {row['clips_per_s']:8.2f} clips/s",
              file=sys.stderr, flush=True)  # fmt: skip
        del pipe
    for row in rows:
        audio = row.pop("audio")
        row["max_abs_diff_vs_fp32_nu1"] = None if row["nu"] != 1.0 else float((audio - reference).abs().max())
    plain = next(r for r in rows if r["dtype"] == "fp32" and r["mode"] == "eager" and r["nu"] == 1.0)
    for row in rows:
        row["speedup_vs_fp32_nu1"] = plain["latency_s"] / row["latency_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return dict(device=name, torch=torch.__version__, tiny=args.tiny, rows=rows,
                audio_seconds=samples / base.sampling_rate)  # fmt: skip


def markdown(result: dict) -> str:
    lines = [f"{result['device']}, torch {result['torch']}, 1-step generation of {result['audio_seconds']:.3g} s"
             + (" (tiny random model)" if result["tiny"] else " (dit_v2 + Gaussian DAC + CLAP text, random weights)"),
             "",
             "| dtype | mode | ν | latency (ms) | × fp32 ν = 1 | clips/s at batch {} | peak memory (GB) | max abs Δ vs fp32 ν = 1 |".format(
                 result["rows"][0]["batch"]),
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        diff = "–" if r["max_abs_diff_vs_fp32_nu1"] is None else f"{r['max_abs_diff_vs_fp32_nu1']:.2e}"
        memory = f"{r['peak_memory_GB']:.2f}" if "peak_memory_GB" in r else "–"
        lines.append(f"| {r['dtype']} | {r['mode']} | {r['nu']:g} | {r['latency_s'] * 1e3:.2f} | "
                     f"{r['speedup_vs_fp32_nu1']:.2f} | {r['clips_per_s']:.2f} | {memory} | {diff} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16", help="comma-separated among fp32, bf16, fp16")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    parser.add_argument("--compile-backend", default="inductor", help='torch.compile backend ("eager" only traces)')
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="calls before timing (compilation happens here)")
    parser.add_argument("--batch", type=int, default=16, help="clips per call for the throughput column")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (checks that everything runs)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown or not args.dtypes:
        parser.error(f"--dtypes: choose among {', '.join(DTYPES)}; got {args.dtypes}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --tiny to check the script)")
    result = run(args)
    print(markdown(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
