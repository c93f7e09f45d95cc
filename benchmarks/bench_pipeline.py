"""Speed and memory of SoundCTMPipeline on this machine, as ratios from one run (random weights, batch 1, 10 s).

For each DiT size (a mid-size model and the full dit_v2, 1.05 B parameters), with the paper's VAE (63 M) and a
roberta-base-sized CLAP text encoder:

  (a) pipeline overhead = 1-step pipeline wall time / (text encoder + one DiT forward + VAE decode, timed alone);
  (b) 40-step Heun teacher (CFG, batch 2: 79 network evaluations) / 1-step student (nu = 1);
  (c) cost of nu != 1 (conditional + unconditional in one batch of 2) / nu = 1;
  (d) peak resident memory of a 1-step generation, and the parameter counts.

Each configuration runs in its own process so that its peak memory is its own. For dit_v2 the teacher's 79
evaluations are not all run (about 25 minutes here): the teacher time is 79 x (one batch-2 teacher forward, timed)
+ text encoding + VAE decode, and the table says so.

    python benchmarks/bench_pipeline.py                 # both sizes, markdown table
    python benchmarks/bench_pipeline.py --configs mid   # just the mid-size model
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)  # tiny_models imports hub

CONFIGS = {
    "mid": dict(num_layers=8, num_attention_heads=12, attention_head_dim=64),
    "dit_v2": dict(num_layers=24, num_attention_heads=24, attention_head_dim=64),
}
PROMPT = "a dog barks while rain falls on a roof"


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(config_name):
    import torch
    from tiny_models import tiny_roberta_tokenizer
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    from soundctm import AutoencoderGaussianDAC, CTMScheduler, SoundCTMDiTModel, SoundCTMPipeline

    torch.manual_seed(0)
    tokenizer = tiny_roberta_tokenizer()
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(vocab_size=50265)).eval()  # roberta-base size
    transformer = SoundCTMDiTModel(cross_attention_dim=768, sample_size=432, is_student=True, **CONFIGS[config_name]).eval()
    vae = AutoencoderGaussianDAC().eval()  # the paper's Gaussian DAC: 63.4 M parameters, hop 1024
    pipe = SoundCTMPipeline(vae, text_encoder, tokenizer, transformer, CTMScheduler(), text_embedding="pooled")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_config(config_name, repeats):
    import torch

    from soundctm import EDMHeunScheduler, SoundCTMDiTModel, SoundCTMPipeline

    pipe = build(config_name)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    result = {
        "config": config_name,
        "threads": torch.get_num_threads(),
        "params_dit_M": count(pipe.transformer) / 1e6,
        "params_vae_M": count(pipe.vae) / 1e6,
        "params_text_M": count(pipe.text_encoder) / 1e6,
    }
    cpu = torch.device("cpu")
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    with torch.no_grad():
        student = lambda nu=1.0: pipe(PROMPT, num_inference_steps=1, nu=nu, generator=gen())  # noqa: E731
        student()  # warm-up
        result["peak_rss_GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

        # The same work as the pipeline, one component at a time.
        emb = pipe.encode_text([PROMPT], cpu)
        z = torch.randn(1, 64, 432) * 80.0
        c_noise = torch.tensor([torch.log(torch.tensor(80.0)) / 4])
        s_noise = torch.tensor([torch.log(torch.tensor(0.002)) / 4])
        dit_forward = lambda b: pipe.transformer(  # noqa: E731
            z.repeat(b, 1, 1), c_noise.repeat(b), s_noise.repeat(b), torch.full((b,), 5.0),
            encoder_hidden_states=emb.repeat(b, 1, 1),
        )
        # Interleaved, so that a change of load on the machine hits both sides of every ratio alike.
        runs = {k: [] for k in ("student", "text", "dit", "vae", "nu5")}
        for _ in range(repeats):
            runs["student"].append(timed(student, 1))
            runs["text"].append(timed(lambda: pipe.encode_text([PROMPT], cpu), 1))
            runs["dit"].append(timed(lambda: dit_forward(1), 1))
            runs["vae"].append(timed(lambda: pipe.vae.decode(torch.randn(1, 64, 432)), 1))
            runs["nu5"].append(timed(lambda: student(nu=5.0), 1))
        med = {k: statistics.median(v) for k, v in runs.items()}
        t_student, t_text, t_vae = med["student"], med["text"], med["vae"]
        result.update(student_1step_s=t_student, text_s=t_text, dit_forward_s=med["dit"], vae_decode_s=t_vae,
                      student_1step_nu5_s=med["nu5"])
        result["overhead_ratio"] = statistics.median(
            s / (t + d + v) for s, t, d, v in zip(runs["student"], runs["text"], runs["dit"], runs["vae"])
        )
        result["nu_cost_ratio"] = statistics.median(n / s for n, s in zip(runs["nu5"], runs["student"]))

        # Teacher of the same size: the same weights in teacher mode, EDM Heun 40 steps with CFG.
        teacher_dit = SoundCTMDiTModel.from_config({**pipe.transformer.config, "is_student": False}).eval()
        teacher_dit.load_state_dict(pipe.transformer.state_dict())
        components = {**pipe.components, "transformer": teacher_dit, "scheduler": EDMHeunScheduler()}
        teacher = SoundCTMPipeline(**components, text_embedding="pooled")
        teacher.set_progress_bar_config(disable=True)
        if config_name == "mid":
            result["teacher_heun40_s"] = timed(lambda: teacher(PROMPT, num_inference_steps=40, generator=gen()), 1)
            result["teacher_measured"] = "full run"
        else:
            embs = emb.repeat(2, 1, 1)
            t_eval = timed(lambda: teacher_dit(z.repeat(2, 1, 1), c_noise.repeat(2), encoder_hidden_states=embs), 2)
            result["teacher_eval_batch2_s"] = t_eval
            result["teacher_heun40_s"] = 79 * t_eval + t_text + t_vae
            result["teacher_measured"] = "79 x timed batch-2 forward + text + VAE"
        del teacher, teacher_dit
        # The student is timed again right after the teacher, and the ratio taken against the two students' mean.
        t_after = timed(student, 1)
        result["teacher_over_student"] = result["teacher_heun40_s"] / ((runs["student"][-1] + t_after) / 2)
    return result


def markdown(results):
    rows = [
        "| DiT | params DiT / VAE / text (M) | 1-step student | overhead (a) | Heun-40 teacher / 1-step (b) | nu != 1 / nu = 1 (c) | peak RSS (d) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['config']} | {r['params_dit_M']:.0f} / {r['params_vae_M']:.1f} / {r['params_text_M']:.0f} "
            f"| {r['student_1step_s']:.2f} s (DiT {r['dit_forward_s']:.2f} s, VAE {r['vae_decode_s']:.2f} s, text {r['text_s']:.3f} s) "
            f"| {r['overhead_ratio']:.3f} | {r['teacher_over_student']:.1f}x ({r['teacher_measured']}) "
            f"| {r['nu_cost_ratio']:.2f}x | {r['peak_rss_GB']:.2f} GB |"
        )
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; ratios are their medians")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_config(args.child, args.repeats)))
        return
    results = []
    for name in args.configs:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(markdown(results))


if __name__ == "__main__":
    main()
