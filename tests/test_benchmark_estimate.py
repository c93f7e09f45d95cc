"""benchmarks/estimate_distill_cost.py runs and its counts are what it says: Stable Audio Open's DiT has 1.06 B
parameters, a step's FLOPs follow the stated model of the trainer's work, and the memory sums its parts."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_estimate_counts_stable_audio_open_and_the_steps_work(tmp_path):
    out = tmp_path / "cost.json"
    script = os.path.join(ROOT, "benchmarks", "estimate_distill_cost.py")
    result = subprocess.run([sys.executable, script, "--skip_cpu", "--batch", "2", "--num_timesteps", "10", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cost = json.loads(out.read_text())
    assert 1.05e9 < cost["parameters"]["dit"] < 1.07e9  # Stable Audio Open's DiT
    F, k = cost["dit_forward_flops_per_clip"], cost["expected_heun_steps"]
    assert k == (2 * 9 + 1) / 3
    # ~2·params FLOPs per token over 1025 tokens, plus attention: the count is of the right size
    assert 2 * cost["parameters"]["dit"] * 1025 < F < 2 * 2 * cost["parameters"]["dit"] * 1025
    assert abs(cost["step_flops"] - 2 * ((4 * k + 13) * F + cost["vae_encode_flops_per_clip"])) < 1e-6 * cost["step_flops"]
    assert cost["states_bytes"] == 22 * cost["parameters"]["dit"] + 4 * (cost["parameters"]["t5"] + cost["parameters"]["vae"])
    assert "H100" in result.stdout and "estimate" in result.stdout
