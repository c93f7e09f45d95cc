"""With the student sharded by FSDP (torch's fully_shard, 2 CPU processes over gloo), λ_DSM's last-layer gradient
(formed from activations) equals autograd's on an unsharded copy, and `full_student_parameters` hands the EMA networks
the full weights. accelerate does not enable FSDP on a CPU, so this runs torch's FSDP2 directly."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import copy, sys, types
    import torch, torch.distributed as dist
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import fully_shard
    sys.path[:0] = [{root!r}, {tests!r}]
    from tiny_models import tiny_transformer
    from distill.losses import conv1x1_weight_grad
    from distill.train import LayerInput, full_student_parameters, make_student, update_target

    dist.init_process_group("gloo")
    student = make_student(tiny_transformer(16, is_student=False), 16)
    reference, target = copy.deepcopy(student), copy.deepcopy(student).requires_grad_(False)
    last_input = LayerInput(student.postprocess_conv)
    for block in student.transformer_blocks:
        fully_shard(block)
    fully_shard(student)
    assert type(next(student.parameters())).__name__ == "DTensor"

    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(2, 4, 16, generator=g), torch.randn(2, 1, 16, generator=g)
    kw = dict(timestep=torch.tensor([0.5, 1.0]), target_timestep=torch.tensor([0.1, 0.2]),
              guidance_scale=torch.tensor([2.0, 3.0]), encoder_hidden_states=c)
    F = student(z, **kw).sample
    grad_F = torch.autograd.grad(torch.sin(F).sum(), F)[0]
    expected = torch.autograd.grad(torch.sin(reference(z, **kw).sample).sum(), reference.postprocess_conv.weight)[0]
    torch.testing.assert_close(conv1x1_weight_grad(grad_F, last_input.value), expected, rtol=1e-5, atol=1e-6)

    accelerator = types.SimpleNamespace(distributed_type=DistributedType.FSDP, unwrap_model=lambda m: m)
    with full_student_parameters(accelerator, student) as params:
        update_target(target, params, 0.0)  # μ = 0: the target becomes the student
    for p, q in zip(target.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    open(f"rank{{dist.get_rank()}}.ok", "w").close()
    dist.destroy_process_group()
    """
)


def test_last_layer_gradient_and_full_weights_under_fsdp(tmp_path):
    script = tmp_path / "fsdp_check.py"
    script.write_text(SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def run():
        return subprocess.run(
            # --standalone: a rendezvous on a port the OS picks, not the default 29500 that another run may hold
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
            cwd=str(tmp_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )

    result = run()
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr:
        # A gloo worker once aborted in C++ after its checks had run (one CI run of many, not reproducible in 8 local
        # runs): run again; a real failure fails twice.
        result = run()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (tmp_path / "rank0.ok").exists() and (tmp_path / "rank1.ok").exists()
