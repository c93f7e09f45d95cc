"""benchmarks/bench_control.py runs end to end (on a tiny random student, with the recipe's held-out clips and
evaluator modules): every study writes its rows, so the benchmark cannot rot between runs on the demo model."""

import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_control  # noqa: E402


def test_every_study_writes_finite_rows(tmp_path, capsys):
    out = tmp_path / "control.json"
    argv = ["--tiny", "--prompts", "1", "--curves", "rising", "--steps", "2", "--ditto-iterations", "2"]
    bench_control.main(argv + ["--strengths", "0.5,1.0", "--a2a-steps", "1", "--json", str(out)])
    results = json.loads(out.read_text())
    methods = [row["method"] for row in results["intensity"]]
    assert methods[0] == "default generation" and "DITTO-2" in methods and any("guidance" in m for m in methods)
    assert all(math.isfinite(row["mse_db2"]) for row in results["intensity"])
    assert len(results["bandwidth"]) >= 2 and len(results["audio2audio"]) == 2
    assert "Audio-to-audio" in capsys.readouterr().out
