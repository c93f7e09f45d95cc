"""benchmarks/bench_gpu.py, the script a session with a GPU runs, exercised on CPU with a tiny model: every row
(ν = 5 and ν = 1 in fp32, bf16, torch.compile traced with the "eager" backend) runs, and the fast paths give the
plain path's sound within bf16's precision."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu  # noqa: E402


def test_the_gpu_benchmark_runs_every_row_on_cpu_and_the_fast_paths_keep_the_sound(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    bench_gpu.main(["--device", "cpu", "--tiny", "--dtypes", "fp32,bf16", "--compile-backend", "eager",
                    "--repeats", "2", "--warmup", "1", "--batch", "2", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    rows = {(r["dtype"], r["mode"], r["nu"]): r for r in result["rows"]}
    assert set(rows) == {("fp32", "eager", 5.0), ("fp32", "eager", 1.0), ("bf16", "eager", 1.0), ("bf16", "compile", 1.0)}
    assert rows[("fp32", "eager", 1.0)]["max_abs_diff_vs_fp32_nu1"] == 0.0
    for key in (("bf16", "eager", 1.0), ("bf16", "compile", 1.0)):
        assert 0.0 <= rows[key]["max_abs_diff_vs_fp32_nu1"] < 0.05  # bf16 rounding, not another sound
        assert rows[key]["clips_per_s"] > 0 and rows[key]["batch"] == 2
    table = capsys.readouterr().out
    assert "| bf16 | compile | 1 |" in table and "clips/s at batch 2" in table


def test_bad_arguments_name_the_allowed_values(capsys):
    with pytest.raises(SystemExit):
        bench_gpu.main(["--device", "cpu", "--tiny", "--dtypes", "fp8"])
    assert "--dtypes: choose among fp32, bf16, fp16" in capsys.readouterr().err
