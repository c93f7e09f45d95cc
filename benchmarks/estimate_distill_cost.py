"""What one distillation step of Stable Audio Open (`stabilityai/stable-audio-open-1.0`, 1.06 B DiT) costs on one GPU,
ESTIMATED from FLOP counts and memory accounting, with the parts that can be measured here measured.

Counted (exact, independent of the device):
- parameters of the full-size components, built on the meta device from diffusers' defaults, which are Stable Audio
  Open's configuration (DiT: 24 layers, 24 heads of 64, 1024 latent frames; Oobleck VAE; a T5-base encoder);
- FLOPs of one DiT forward of one 47.55 s clip (1024 frames + the global token, 128 + 2 text tokens) and of the VAE
  encoder, by `torch.utils.flop_counter.FlopCounterMode` on meta tensors;
- the bytes autograd keeps for the backward of one student row under bf16 autocast with gradient checkpointing (the
  block inputs), and inside one recomputed block, by `torch.autograd.graph.saved_tensors_hooks`, on a 2-block model of
  full width on this CPU (the per-block figure times 24).

Measured here: this CPU's throughput on that 2-block full-width forward (fp32), to check the FLOP count against time.

Modelled (the estimate): FLOPs of one step of distill/train.py per clip =
  teacher solve   4·E[k]·F    (k Heun steps, 2 evaluations each, on the cond and "" rows; E[k] = (2K + 1)/3)
  target jump     1·F
  student         8·F         (forward of the CTM and DSM rows 2F, recomputed 2F, backward 4F)
  d_teacher       4·F         (target features 1F; estimate features 1F, recomputed 1F, backward to the input 1F)
with F one DiT forward of one clip; plus the VAE encoder. Time = FLOPs / (peak bf16 dense × MFU) with the MFU given
(default 0.4, a typical figure for a well-fed transformer step; it is an assumption, not a measurement). Memory =
training states (fp32 student, gradients, RAdam's two moments, the fp32 EMA target, the export EMA with --use_ema, the
bf16 teacher, T5 and VAE in fp32) + saved activations of the batch + one recomputed block.

    python benchmarks/estimate_distill_cost.py                 # markdown table
    python benchmarks/estimate_distill_cost.py --json runs/sa_cost.json --batch 4
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from diffusers import AutoencoderOobleck, StableAudioDiTModel  # noqa: E402
from diffusers.models.embeddings import get_1d_rotary_pos_embed  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import T5Config, T5EncoderModel  # noqa: E402

GPUS = {"H100 SXM (989 TFLOP/s bf16 dense)": 989e12, "A100 (312 TFLOP/s bf16 dense)": 312e12}
TEXT_TOKENS = 128  # Stable Audio Open's T5 tokenizer pads prompts to 128 tokens; + seconds start and end
T5_BASE = dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, vocab_size=32128, feed_forward_proj="relu")


def dit_inputs(config, batch, device, dtype=torch.float32, generator=None):
    frames, head = config.sample_size, config.attention_head_dim
    make = (lambda *s: torch.randn(*s, generator=generator, dtype=dtype)) if device == "cpu" else (lambda *s: torch.empty(*s, device=device, dtype=dtype))
    cos, sin = get_1d_rotary_pos_embed(head // 2, frames + 1, use_real=True, repeat_interleave_real=False)
    return dict(
        hidden_states=make(batch, config.in_channels, frames),
        timestep=torch.full((batch,), 0.5, device=device),
        encoder_hidden_states=make(batch, TEXT_TOKENS + 2, config.cross_attention_input_dim),
        global_hidden_states=make(batch, 1, config.global_states_input_dim),
        rotary_embedding=(cos.to(device), sin.to(device)),
    )


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def parameter_counts() -> dict:
    with torch.device("meta"):
        dit, vae, t5 = StableAudioDiTModel(), AutoencoderOobleck(), T5EncoderModel(T5Config(**T5_BASE))
    return {name: sum(p.numel() for p in m.parameters()) for name, m in (("dit", dit), ("vae", vae), ("t5", t5))}, dit, vae


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward while `fn` runs (storage counted once)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="clips per process (distill/configs/soundctm_stable_audio_open.yaml: 4)")
    parser.add_argument("--num_timesteps", type=int, default=40, help="N; the solve takes k <= N - 1 Heun steps, P(k) ∝ k")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation of the GPU")
    parser.add_argument("--use_ema", action="store_true", help="count the export EMA copy too")
    parser.add_argument("--skip_cpu", action="store_true", help="skip the CPU measurements (the 2-block model)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    params, dit, vae = parameter_counts()
    config = dit.config
    F = count_flops(lambda: dit(**dit_inputs(config, 1, "meta")))
    samples = config.sample_size * 2048  # 1024 latent frames of hop 2048: 47.55 s at 44.1 kHz
    vae_encode = count_flops(lambda: vae.encode(torch.empty(1, 2, samples, device="meta")))
    k = (2 * (args.num_timesteps - 1) + 1) / 3
    per_clip = {"teacher_solve": 4 * k * F, "target_jump": F, "student": 8 * F, "d_teacher": 4 * F, "vae_encode": vae_encode}
    step_flops = args.batch * sum(per_clip.values())

    # Memory: training states and the text/VAE models, in bytes.
    bytes_per_param = 4 + 4 + 8 + 4 + (4 if args.use_ema else 0) + 2
    states = params["dit"] * bytes_per_param + 4 * (params["t5"] + params["vae"])

    result = {
        "parameters": params,
        "dit_forward_flops_per_clip": F,
        "vae_encode_flops_per_clip": vae_encode,
        "expected_heun_steps": k,
        "step_flops_per_clip": per_clip,
        "batch": args.batch,
        "step_flops": step_flops,
        "mfu_assumed": args.mfu,
        "states_bytes": states,
    }

    if not args.skip_cpu:
        # A 2-block model of full width on this CPU: FLOPs vs measured time, and the saved activations per block.
        torch.manual_seed(0)
        small = StableAudioDiTModel(num_layers=2).eval()
        inputs = dit_inputs(small.config, 1, "cpu", generator=torch.Generator().manual_seed(0))
        small_flops = count_flops(lambda: small(**inputs))
        with torch.no_grad():
            small(**inputs)  # warm-up
            start = time.perf_counter()
            small(**inputs)
            seconds = time.perf_counter() - start
        small.train().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            small.enable_gradient_checkpointing()
            checkpointed = saved_bytes(lambda: small(**inputs))
            small.disable_gradient_checkpointing()
            plain = saved_bytes(lambda: small(**inputs))
        block_input = checkpointed / 2  # what checkpointing keeps per block (its input), per row
        block_inside = (plain - checkpointed) / 2  # what one recomputed block holds for its backward, per row
        rows_with_grad = 3 * args.batch  # the student's CTM and DSM rows, and the d_teacher estimate row
        activations = rows_with_grad * (config.num_layers * block_input + block_inside)
        result.update(
            cpu_two_block_flops=small_flops,
            cpu_two_block_seconds=seconds,
            cpu_gflops_per_s=small_flops / seconds / 1e9,
            saved_bytes_per_block_input=block_input,
            saved_bytes_per_recomputed_block=block_inside,
            activations_bytes=activations,
            total_bytes=states + activations,
        )

    gib = 2**30
    print(f"Stable Audio Open distillation step, estimated (benchmarks/estimate_distill_cost.py), batch {args.batch} clips of 47.55 s, N = {args.num_timesteps} (E[k] = {k:.1f})\n")
    print(f"- parameters: DiT {params['dit'] / 1e9:.3f} B, VAE {params['vae'] / 1e6:.0f} M, T5-base encoder {params['t5'] / 1e6:.0f} M (counted)")
    print(f"- one DiT forward of one clip: {F / 1e12:.2f} TFLOP; VAE encoder {vae_encode / 1e12:.2f} TFLOP (counted)")
    print(f"- one step: {step_flops / 1e15:.2f} PFLOP = " + ", ".join(f"{name} {args.batch * v / step_flops:.0%}" for name, v in per_clip.items()))
    if "cpu_gflops_per_s" in result:
        print(f"- this CPU runs the 2-block full-width forward at {result['cpu_gflops_per_s']:.0f} GFLOP/s (measured; {result['cpu_two_block_seconds']:.2f} s for {result['cpu_two_block_flops'] / 1e9:.0f} GFLOP)")
    print("\n| GPU | step time at MFU %.2f (estimate) | clips/s |" % args.mfu)
    print("|---|---|---|")
    for name, peak in GPUS.items():
        t = step_flops / (peak * args.mfu)
        result.setdefault("step_seconds", {})[name] = t
        print(f"| {name} | {t:.1f} s | {args.batch / t:.2f} |")
    print(f"\nMemory: training states {states / gib:.1f} GiB ({bytes_per_param} B per DiT parameter{' with the export EMA' if args.use_ema else ''}, T5 and VAE in fp32)", end="")
    if "activations_bytes" in result:
        print(f" + saved activations {result['activations_bytes'] / gib:.1f} GiB ({rows_with_grad} rows with gradient × 24 block inputs of "
              f"{block_input / 2**20:.1f} MiB + one recomputed block of {block_inside / 2**20:.0f} MiB per row, measured under bf16 autocast) "
              f"= {result['total_bytes'] / gib:.1f} GiB, before the allocator's overhead and the solve's transient activations")
    else:
        print()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
