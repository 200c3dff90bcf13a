"""experiments/benchmark.py end to end, shrunk: two systems, one config, two epochs, tiny peak."""

import json
import subprocess
import sys

from conftest import REPO


def test_benchmark_runs_and_writes_its_table(tmp_path):
  out = tmp_path / "bench"
  result = subprocess.run(
      [sys.executable, "experiments/benchmark.py", "--configs=adam_mlp",
       "--systems=mnist_jax,jax_scan", "--epochs=2", "--repeats=1", "--skip_launch",
       "--peak_size=256", "--peak_reps=1", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  report = json.loads((out / "benchmark.json").read_text())
  assert report["errors"] == [] and report["peak"]["gflops"] > 0
  entry = report["results"]["adam_mlp"]
  assert entry["flops_per_example"] == 6 * (784 * 100 + 100 * 10) - 2 * 784 * 100
  for system in ("mnist_jax", "jax_scan"):
    s = entry["systems"][system]
    assert s["steady_epochs"] == 1 and s["steady_min"] > 0, s
    assert s["test_accuracy_mean"] > 0.9, s  # two epochs of adam_mlp: ~0.97
  table = (out / "benchmark.md").read_text()
  assert "| adam_mlp | mnist_jax | cpu |" in table and "| adam_mlp | jax_scan | cpu |" in table
