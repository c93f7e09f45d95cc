"""Seconds per distillation step of distill/train.py on this machine, split into its parts, for a mid-size model.

The mid-size config (random weights, fp32): a DiT of 8 layers x 256 wide (4 heads of 64), 64 latent channels,
216 latent frames, batch 8; a Gaussian DAC VAE with hop 256 (a 1.25 s clip at 44.1 kHz); a small CLAP text
encoder (128-d projected embedding). Every part is timed with the trainer's own functions (medians of --repeats runs):

  teacher solve     one Heun step of the CFG-guided teacher (2 evaluations, cond + "" as one batch of 2B), times k;
  target jump       the EMA target network's jump u -> s (one forward of B, no gradient);
  student fwd/bwd   the student's forward on [z_t; z_sigma] (2B: CTM and DSM together) and the backward from dL/dF;
  d_teacher         the teacher's block features of z_target (no grad) and z_est (with grad) and dL_CTM/dF;
  DSM               the DSM half of the student's batch (2B minus B forward/backward) plus lambda_DSM's cost;
  data              VAE encoding and text encoding of the batch.

A step costs E[k] Heun steps: E[k] = (2K + 1) / 3 for P(k) ∝ k on 1..K (K = N - 1, or the --max_heun_steps cap).
The table gives the parts at the paper's N = 40 (E[k] = 26.3) and at a CPU setting N = 18 with k <= 8 (E[k] = 5.7).

It also measures, in the same process, the choices made against the dominant parts:
  (a) the solve's cond and "" rows in one teacher call of 2B vs chunks of B and B/2 rows (--teacher_batch_size);
  (b) the student's CTM and DSM predictions in one forward of 2B vs two forwards of B;
  (c) d_teacher as target (no grad, B) + estimate (grad, B) vs one call on [estimate; target] (grad, 2B);
  (d) the backward from dL/dF with lambda_DSM from activations vs the authors' three backward passes
      (autograd on the last layer for L_CTM through the teacher, for L_DSM, then the full backward).

    python benchmarks/bench_distill.py                  # markdown table
    python benchmarks/bench_distill.py --repeats 5 --json
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from tiny_models import PROMPTS, tiny_roberta_tokenizer  # noqa: E402

from distill.losses import (  # noqa: E402
    adaptive_dsm_weight,
    conv1x1_weight_grad,
    ctm_jump,
    d_teacher,
    dsm_loss,
    expected_heun_steps,
    heun_solve_cfg,
    student_output,
)
from distill.teacher import SoundCTMTeacher  # noqa: E402
from distill.train import LayerInput, make_student  # noqa: E402
from soundctm import AutoencoderGaussianDAC, CTMScheduler, EDMHeunScheduler, SoundCTMDiTModel, SoundCTMPipeline  # noqa: E402

MID = dict(in_channels=64, num_layers=8, attention_head_dim=64, num_attention_heads=4, timestep_features_dim=256)
SETTINGS = {"paper N=40": expected_heun_steps(39), "CPU N=18, k<=8": expected_heun_steps(8)}


def timed(fn, repeats):
    return timed_alternating([fn], repeats)[0]


def timed_alternating(fns, repeats):
    """Median seconds of each function, the functions run in turn within every repeat (so that a change in the
    machine's load during the run falls on all of them alike)."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def build(frames, seed=0):
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_roberta_tokenizer()
    width = 128  # a multiple of the head width: 2 key/value heads
    text_encoder = ClapTextModelWithProjection(
        ClapTextConfig(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            projection_dim=width, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    teacher_dit = SoundCTMDiTModel(cross_attention_dim=width, sample_size=frames, is_student=False, **MID).eval()
    vae = AutoencoderGaussianDAC(
        encoder_dim=16, encoder_rates=[4, 4, 4, 4], latent_dim=64, decoder_dim=256, decoder_rates=[4, 4, 4, 4]
    ).eval()
    pipe = SoundCTMPipeline(vae, text_encoder, tokenizer, teacher_dit, EDMHeunScheduler(), text_embedding="projected")
    return pipe


def run(args):
    torch.set_grad_enabled(True)
    cpu = torch.device("cpu")
    B, T = args.batch, args.frames
    pipe = build(T)
    scheduler = CTMScheduler()
    teacher = SoundCTMTeacher(pipe.transformer, scheduler)
    # (a): the same 2B rows of a solve evaluation in chunks (--teacher_batch_size).
    chunked = {rows: SoundCTMTeacher(pipe.transformer, scheduler, max_batch_size=rows) for rows in (B, max(1, B // 2))}
    pipe.transformer.requires_grad_(False)
    student = make_student(pipe.transformer, T).train()
    target = make_student(pipe.transformer, T).requires_grad_(False).eval()
    last_input = LayerInput(student.postprocess_conv)
    g = torch.Generator().manual_seed(0)

    captions = [PROMPTS[i % len(PROMPTS)] for i in range(B)]
    audio = torch.randn(B, 1, T * pipe.vae.hop_length, generator=g) * 0.1
    cond, uncond = pipe.encode_text(captions, cpu), pipe.encode_text([""] * B, cpu)
    sigmas = torch.from_numpy(scheduler.karras_sigmas(40)).float()
    z0 = torch.randn(B, 64, T, generator=g) * 0.5
    n = torch.randint(0, 30, (B,), generator=g)
    t, s = sigmas[n], sigmas[n + 5]
    omega = torch.rand(B, generator=g) * 9 + 1
    z_t = z0 + t[:, None, None] * torch.randn(B, 64, T, generator=g)
    dsm_sigma = torch.exp(torch.randn(B, generator=g) * 1.2 - 1.2)
    z_dsm = z0 + dsm_sigma[:, None, None] * torch.randn(B, 64, T, generator=g)
    with torch.no_grad():
        z_target = z_t * 0.9
    R, k = args.repeats, args.heun_steps
    r = {"batch": B, "frames": T, "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()[0]}
    r["params_M"] = sum(p.numel() for p in student.parameters()) / 1e6

    # Data side.
    with torch.no_grad():
        r["vae_encode_s"] = timed(lambda: pipe.vae.encode(audio).latent_dist.mean, R)
        r["text_encode_s"] = timed(lambda: pipe.encode_text(captions, cpu), R)

    # Teacher solve: per Heun step, batched CFG (as trained) and two calls (a).
    solve = lambda t: lambda: heun_solve_cfg(t, z_t, sigmas, n, k, cond, uncond, omega)  # noqa: E731
    times = timed_alternating([solve(teacher)] + [solve(t) for t in chunked.values()], R)
    r["heun_step_s"] = times[0] / k
    r["heun_step_chunked_s"] = {rows: seconds / k for rows, seconds in zip(chunked, times[1:])}

    # Target jump.
    with torch.no_grad():
        r["target_jump_s"] = timed(lambda: student_output(target, scheduler, z_t, t, s, omega, cond), R)

    # Student forward/backward: 2B (CTM + DSM, as trained), B (CTM only), two forwards of B (b).
    def student_fwd_bwd(halves):
        student.zero_grad(set_to_none=True)
        if halves == "joint":
            F = student_output(
                student, scheduler, torch.cat([z_t, z_dsm]), torch.cat([t, dsm_sigma]), torch.cat([s, dsm_sigma]),
                torch.cat([omega, omega]), torch.cat([cond, cond]),
            )
            F.sum().backward()
        elif halves == "ctm":
            student_output(student, scheduler, z_t, t, s, omega, cond).sum().backward()
        else:
            F1 = student_output(student, scheduler, z_t, t, s, omega, cond)
            F2 = student_output(student, scheduler, z_dsm, dsm_sigma, dsm_sigma, omega, cond)
            (F1.sum() + F2.sum()).backward()

    r["student_2B_s"], r["student_B_s"], r["student_two_forwards_s"] = timed_alternating(
        [lambda: student_fwd_bwd("joint"), lambda: student_fwd_bwd("ctm"), lambda: student_fwd_bwd("two")], R
    )

    # d_teacher: as trained (target no-grad + estimate with grad), vs one joint call with grad (c).
    def d_teacher_cost(joint):
        z_est = z_t.clone().requires_grad_(True)
        if joint:
            features = teacher.block_features(torch.cat([z_est, z_target]), torch.cat([s, s]), torch.cat([cond, cond]))
            loss = d_teacher([f[:B] for f in features], [f[B:] for f in features]).mean()
        else:
            with torch.no_grad():
                features_target = teacher.block_features(z_target, s, cond)
            loss = d_teacher(teacher.block_features(z_est, s, cond), features_target).mean()
        torch.autograd.grad(loss, z_est)

    r["d_teacher_s"], r["d_teacher_joint_s"] = timed_alternating([lambda: d_teacher_cost(False), lambda: d_teacher_cost(True)], R)

    # (d) the loss-to-gradients part of a step, both ways, with everything else held equal.
    def losses_and_backward(authors):
        student.zero_grad(set_to_none=True)
        F = student_output(
            student, scheduler, torch.cat([z_t, z_dsm]), torch.cat([t, dsm_sigma]), torch.cat([s, dsm_sigma]),
            torch.cat([omega, omega]), torch.cat([cond, cond]),
        )
        F_ctm, F_dsm = F.chunk(2)
        z_est, _ = ctm_jump(scheduler, F_ctm, z_t, t, s)
        _, g_dsm = ctm_jump(scheduler, F_dsm, z_dsm, dsm_sigma, dsm_sigma)
        loss_dsm = dsm_loss(g_dsm, z0, dsm_sigma, 0.5).mean()
        with torch.no_grad():
            features_target = teacher.block_features(z_target, s, cond)
        loss_ctm = d_teacher(teacher.block_features(z_est, s, cond), features_target).mean()
        if authors:
            W = student.postprocess_conv.weight
            g_ctm_W = torch.autograd.grad(loss_ctm, W, retain_graph=True)[0]
            g_dsm_W = torch.autograd.grad(loss_dsm, W, retain_graph=True)[0]
            lam = adaptive_dsm_weight(g_ctm_W, g_dsm_W)
            (loss_ctm + 0.2 * lam * loss_dsm).backward()
        else:
            grad_dsm = torch.autograd.grad(loss_dsm, F, retain_graph=True)[0]
            grad_ctm = torch.autograd.grad(loss_ctm, F)[0]
            x = last_input.value
            lam = adaptive_dsm_weight(conv1x1_weight_grad(grad_ctm, x), conv1x1_weight_grad(grad_dsm, x))
            (F * (grad_ctm + 0.2 * lam * grad_dsm)).sum().backward()

    r["losses_backward_s"], r["losses_backward_authors_s"] = timed_alternating(
        [lambda: losses_and_backward(False), lambda: losses_and_backward(True)], R
    )

    # The step's parts; the DSM part is the DSM half of the student's batch plus lambda's extra cost.
    r["student_fwd_bwd_s"] = r["student_B_s"]
    r["dsm_s"] = r["student_2B_s"] - r["student_B_s"] + max(
        0.0, r["losses_backward_s"] - r["student_2B_s"] - r["d_teacher_s"]
    )
    r["data_s"] = r["vae_encode_s"] + r["text_encode_s"]
    for name, expected_k in SETTINGS.items():
        parts = {
            "teacher solve": expected_k * r["heun_step_s"],
            "target jump": r["target_jump_s"],
            "student fwd/bwd": r["student_fwd_bwd_s"],
            "d_teacher": r["d_teacher_s"],
            "DSM": r["dsm_s"],
            "data (VAE + text)": r["data_s"],
        }
        r[name] = {"E[k]": expected_k, "parts_s": parts, "step_s": sum(parts.values())}
    r["load_average_end"] = os.getloadavg()[0]
    return r


def markdown(r):
    lines = [
        f"Mid-size DiT: {r['params_M']:.1f} M parameters, batch {r['batch']} x {r['frames']} frames, "
        f"{r['threads']} threads, fp32; 1-minute load average {r['load_average_start']:.1f} at the start, "
        f"{r['load_average_end']:.1f} at the end (other processes on the machine slow every part, and not equally).",
        "",
        "| part | " + " | ".join(f"{name} (E[k] = {r[name]['E[k]']:.1f})" for name in SETTINGS) + " |",
        "|---|" + "---|" * len(SETTINGS),
    ]
    for part in r[next(iter(SETTINGS))]["parts_s"]:
        cells = [f"{r[n]['parts_s'][part]:.2f} s ({100 * r[n]['parts_s'][part] / r[n]['step_s']:.0f}%)" for n in SETTINGS]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{r[n]['step_s']:.2f} s**" for n in SETTINGS) + " |")
    lines += [
        "",
        "| choice | default (as trained) | alternative | alternative / default |",
        "|---|---|---|---|",
        *(
            f"| (a) teacher solve, per Heun step | cond + \"\" in one call of 2B = {2 * r['batch']} rows: "
            f"{r['heun_step_s']:.3f} s | calls of {rows} rows (--teacher_batch_size {rows}): {seconds:.3f} s "
            f"| {seconds / r['heun_step_s']:.2f} |"
            for rows, seconds in r["heun_step_chunked_s"].items()
        ),
        f"| (b) student CTM + DSM forward/backward | one forward of 2B: {r['student_2B_s']:.3f} s | two forwards of B: "
        f"{r['student_two_forwards_s']:.3f} s | {r['student_two_forwards_s'] / r['student_2B_s']:.2f} |",
        f"| (c) d_teacher features | target no-grad + estimate: {r['d_teacher_s']:.3f} s | one call of 2B with grad: "
        f"{r['d_teacher_joint_s']:.3f} s | {r['d_teacher_joint_s'] / r['d_teacher_s']:.2f} |",
        f"| (d) losses to gradients (student fwd/bwd + d_teacher + lambda) | from dL/dF: {r['losses_backward_s']:.3f} s "
        f"| authors' 3 backward passes: {r['losses_backward_authors_s']:.3f} s "
        f"| {r['losses_backward_authors_s'] / r['losses_backward_s']:.2f} |",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=216)
    parser.add_argument("--heun_steps", type=int, default=1, help="Heun steps timed to get the per-step cost.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
