"""The full-size Gaussian DAC (63 M, hop 1024) decoding and encoding 10 s, and a full-size 1-step generation (dit_v2
DiT, 1.05 B, ν = 1, + the decoder), with the VAE's time-chunked inference (`vae.enable_tiling()`, the default) against
the whole clip in one pass through every layer (`vae.disable_tiling()`), on random weights, batch 1.

Why chunks: at full rate a 10 s clip's activations are 96 channels × 442 368 samples = 170 MB each, and every op of
the decoder writes a fresh one; a fresh allocation of that size is mapped and zero-filled page by page by the kernel,
which costs as much as the op's arithmetic (`torch.empty` + fill of 170 MB: 60 ms, a refill of the same buffer: 8 ms
here). Decoding each upsampling block over chunks of ~2^20 activation values (with its receptive field as overlap) keeps
every intermediate small enough to be reused from the heap and to stay in cache; the output equals the one-pass
decode up to float rounding.

Times: one process, the two settings interleaved, best of --repeats; their ratio is what the README quotes. Peak
memory: each setting in its own process (`ru_maxrss` after a warm-up and one timed run of that setting only).

    python benchmarks/bench_vae.py                  # decoder, encoder and 1-step generation, markdown
    python benchmarks/bench_vae.py --decoder-only --json runs/bench_vae.json
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

PROMPT = "a dog barks while rain falls on a roof"
FRAMES = 432  # 10.03 s at hop 1024, 44.1 kHz


def setting(vae, tiled: bool):
    vae.enable_tiling() if tiled else vae.disable_tiling()


def build(generate: bool):
    import torch

    from soundctm import AutoencoderGaussianDAC

    torch.manual_seed(0)
    if generate:
        from bench_pipeline import build as build_pipeline

        pipe = build_pipeline("dit_v2")
        return pipe, pipe.vae
    return None, AutoencoderGaussianDAC().eval()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def child(what: str, tiled: bool) -> dict:
    """Peak memory of one setting in this process."""
    import torch

    pipe, vae = build(what == "generate")
    setting(vae, tiled)
    z = torch.randn(1, 64, FRAMES, generator=torch.Generator().manual_seed(1))
    audio = 0.3 * torch.randn(1, 1, FRAMES * 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        run = {
            "generate": lambda: pipe(PROMPT, num_inference_steps=1, generator=torch.Generator().manual_seed(0)),
            "decode": lambda: vae.decode(z),
            "encode": lambda: vae.encode(audio),
        }[what]
        run()
        seconds, _ = timed(run)
    return {"seconds": seconds, "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def compare(what: str, repeats: int) -> dict:
    import torch

    pipe, vae = build(what == "generate")
    z = torch.randn(1, 64, FRAMES, generator=torch.Generator().manual_seed(1))
    audio = 0.3 * torch.randn(1, 1, FRAMES * 1024, generator=torch.Generator().manual_seed(2))
    times, outputs = {"plain": [], "tiled": []}, {}
    with torch.no_grad():
        for name in ("plain", "tiled"):  # warm-up
            setting(vae, name == "tiled")
            vae.decode(z[..., :64])
        for _ in range(repeats):
            for name in ("plain", "tiled"):
                setting(vae, name == "tiled")
                if what == "generate":
                    run = lambda: pipe(PROMPT, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt").audios  # noqa: E731
                elif what == "encode":
                    run = lambda: vae.encode(audio).latent_dist.mean  # noqa: E731
                else:
                    run = lambda: vae.decode(z).sample  # noqa: E731
                seconds, outputs[name] = timed(run)
                times[name].append(seconds)
    plain, tiled = outputs["plain"], outputs["tiled"]
    return {
        "what": what,
        "threads": torch.get_num_threads(),
        "plain_s": min(times["plain"]),
        "tiled_s": min(times["tiled"]),
        "speedup": min(times["plain"]) / min(times["tiled"]),
        "max_rel_diff": float((plain - tiled).abs().max() / plain.abs().max()),
        "runs": times,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--decoder-only", action="store_true", help="only the decoder (no encoder, no 1-step generation)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "tiled")))
        return

    whats = ["decode"] + ([] if args.decoder_only else ["encode", "generate"])
    # Memory first, while this process is still small: Linux carries a process's peak RSS across exec into its child.
    peaks = {}
    for what in whats:
        for name in ("plain", "tiled"):
            out = subprocess.run([sys.executable, __file__, "--child", what, name], capture_output=True, text=True, check=True)
            peaks[what, name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_GB"]
    results = []
    for what in whats:
        result = compare(what, args.repeats)
        result.update({f"{name}_peak_rss_GB": peaks[what, name] for name in ("plain", "tiled")})
        results.append(result)

    print("| 10 s, batch 1, this CPU | one pass (`disable_tiling`) | chunked (`enable_tiling`, default) | speedup | max diff / peak | peak RSS one pass / chunked |")
    print("|---|---|---|---|---|---|")
    for r in results:
        label = {"decode": "Gaussian DAC decode", "encode": "Gaussian DAC encode (audio → audio, bandwidth extension, training)",
                 "generate": "1-step generation, dit_v2 + decoder (ν = 1)"}[r["what"]]
        print(f"| {label} | {r['plain_s']:.2f} s | {r['tiled_s']:.2f} s | {r['speedup']:.2f}x | {r['max_rel_diff']:.1e} "
              f"| {r['plain_peak_rss_GB']:.2f} / {r['tiled_peak_rss_GB']:.2f} GB |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
