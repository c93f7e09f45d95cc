"""benchmarks/bench_demo.py on tiny models: the pipeline rows, and the compare timed against `python app.py` serving in
a process of its own (the first column arrives before the last; the app's own time labels are read back)."""

import sys
from pathlib import Path

from app_testing import models_dir, one_torch_thread  # noqa: F401  (fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_demo  # noqa: E402


def test_the_demo_benchmark_times_the_pipelines_and_the_served_compare(models_dir, capsys):
    bench_demo.main(["--student", str(models_dir / "student"), "--teacher", str(models_dir / "teacher"),
                     "--repeats", "1", "--threads", "1", "--no-cli"])  # fmt: skip
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = float(cells[1])
    for name in ("1-step generation", "decode (Griffin-Lim)", "teacher, Heun 40 (the app's teacher column)", "compare, click to the 1-step column (HTTP)",
                 "compare, click to the last column (HTTP)", "compare, its six pipeline calls (the app's time labels)"):
        assert rows.get(name, 0) > 0, name
    assert rows["compare, click to the 1-step column (HTTP)"] < rows["compare, click to the last column (HTTP)"]
