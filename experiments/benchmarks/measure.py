"""What the benchmark measures besides the systems' epochs, and how it sums them up: the
launch-to-result time of `python -m mnist_jax.main`, and each system's epoch-time statistics.
"""

import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from experiments.benchmarks.table import fmt
from experiments.benchmarks.workers import REPO_ROOT, quiet_env


def measure_launch(runs: int, source: str, timeout: float) -> dict:
  """Wall time of `python -m mnist_jax.main --config=adam_mlp`: from process start to the printed
  test accuracy, and to exit (which includes the run's report). The first run starts with an empty
  JAX compilation cache; the later ones use what it stored."""
  with tempfile.TemporaryDirectory(prefix="mnist_jax_launch_") as tmp:
    env = quiet_env()
    env["JAX_COMPILATION_CACHE_DIR"] = str(pathlib.Path(tmp) / "jax_cache")  # empty at first
    extra = [f"--config.data.source={source}"] if source else []
    to_exit, to_accuracy, accuracies = [], [], []
    for i in range(runs):
      workdir = pathlib.Path(tmp) / f"run{i}"
      command = [sys.executable, "-m", "mnist_jax.main", "--config=adam_mlp",
                 f"--workdir={workdir}", *extra]
      started = time.perf_counter()
      process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=env)
      watchdog = threading.Timer(timeout, process.kill)
      watchdog.start()
      printed, output = None, []
      for line in process.stdout:
        output.append(line)
        if printed is None and "test accuracy" in line.lower():
          printed = time.perf_counter() - started
      code = process.wait()
      elapsed = time.perf_counter() - started
      watchdog.cancel()
      if code != 0:
        return {"error": f"exit {code}: {''.join(output[-20:]).strip()}",
                "command": " ".join(command[1:])}
      to_exit.append(elapsed)
      to_accuracy.append(printed)
      accuracies.append(json.loads((workdir / "summary.json").read_text())["test_accuracy"])
      print(f"  launch-to-result run {i + 1}/{runs}: test accuracy printed after "
            f"{fmt(printed, '.2f')} s, exit after {elapsed:.2f} s", file=sys.stderr, flush=True)
  stats = lambda xs: {"first_cold_cache": xs[0],
                      "warm_min": min(xs[1:]) if xs[1:] else None,
                      "warm_median": statistics.median(xs[1:]) if xs[1:] else None}
  return {"command": f"python -m mnist_jax.main --config=adam_mlp --workdir=TMP {' '.join(extra)}".strip(),
          "to_exit": {"seconds": to_exit, **stats(to_exit)},
          "to_printed_accuracy": ({"seconds": to_accuracy, **stats(to_accuracy)}
                                  if None not in to_accuracy else None),
          "test_accuracy": accuracies}


def summarize_system(runs: list[dict], flops_per_epoch: float, peak_gflops: float) -> dict:
  """Epoch-time statistics; FLOP rates over the examples the system really trained on."""
  flops_per_epoch *= runs[0].get("examples_per_epoch_fraction", 1.0)
  firsts = [r["epoch_seconds"][0] for r in runs]
  steady = [s for r in runs for s in r["epoch_seconds"][1:]]
  accuracies = [r["test_accuracy"] for r in runs]
  out = {"first_epoch_median": statistics.median(firsts), "first_epoch": firsts,
         "steady_epochs": len(steady),
         "steady_min": min(steady) if steady else None,
         "steady_median": statistics.median(steady) if steady else None,
         "test_accuracy_mean": statistics.fmean(accuracies), "test_accuracy": accuracies,
         "device": runs[0].get("device")}
  if steady:
    out["gflops"] = flops_per_epoch / out["steady_median"] / 1e9
    out["gflops_best"] = flops_per_epoch / out["steady_min"] / 1e9
    out["fraction_of_peak"] = out["gflops"] / peak_gflops if peak_gflops else None
  return out

