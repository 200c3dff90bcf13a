"""The benchmark programs end to end, shrunk: few systems, one config, two epochs, a tiny peak.

Slow tier: each measurement is a fresh process, as in a real benchmark."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", f"experiments.benchmarks.{module}", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_benchmark_runs_and_writes_its_table(tmp_path):
  out = tmp_path / "bench"
  result = _run("benchmark", "--configs=adam_mlp", "--systems=mnist_jax,jax_scan", "--epochs=2",
                "--repeats=1", "--skip_launch", "--peak_size=256", "--peak_reps=1", f"--out={out}")
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


def test_scaling_benchmark_times_seeds_and_devices_of_a_scheduled_config(tmp_path):
  """best_mlp-like: a warmup-cosine schedule, which needs the run's steps per epoch."""
  config = tmp_path / "tiny_schedule.py"
  config.write_text(
      "from mnist_jax.config import default_config\n"
      "def get_config():\n"
      "  c = default_config()\n"
      "  c.data.source, c.data.train_subset, c.train.batch_size = 'idx', 1024, 128\n"
      "  c.optimizer.schedule, c.optimizer.warmup_epochs = 'warmup_cosine', 1.0\n"
      "  return c\n")
  result = _run("scaling", f"--config={config}", "--seeds=2", "--devices=2", "--epochs=2",
                f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "scaling.json").read_text())["rows"]
  assert [(r["seeds"], r["devices"]) for r in rows] == [(1, 1), (2, 1), (1, 1), (1, 2)]
  assert all(r["median"] > 0 for r in rows)
  # One device: no sharded rows; --train_subset overrides the config's subset.
  result = _run("scaling", f"--config={config}", "--seeds=2", "--devices=1", "--epochs=2",
                "--train_subset=512", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "scaling.json").read_text())
  assert [(r["seeds"], r["devices"]) for r in report["rows"]] == [(1, 1), (2, 1)]
  assert report["args"]["train_subset"] == 512 and "--train_subset=512" in result.stdout


def test_device_check_quick_on_this_machine(tmp_path):
  """The accelerator check, in its CPU-sized form: every part runs and passes here."""
  result = _run("device_check", "--quick", f"--out={tmp_path}")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads((tmp_path / "device_check.json").read_text())
  assert report["tutorials"][0]["ok"] and "test accuracy" in report["tutorials"][0]["printed"]
  assert report["reproducibility"] == {"bit_identical": True, "kill_landed_mid_run": True,
                                       "resume_exact": True, "ok": True}
  assert {(r["config"], r["system"]) for r in report["timings"]} == {
      ("adam_mlp", "mnist_jax"), ("adam_mlp", "jax_scan")}
  assert [r["seeds"] for r in report["seeds"]] == [1, 4]
  assert "| vmapped seeds of adam_mlp |" in (tmp_path / "device_check.md").read_text()


def test_sweep_cost_times_one_program_against_a_shell_loop(tmp_path):
  result = _run("sweep_cost", "--config=adam_mlp", "--learning_rates=1e-3,1e-2",
                "--field=model.input_dropout", "--values=0,0.2", "--epochs=2",
                "--train_subset=600", "--repeats=1", f"--out={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "sweep_cost.json").read_text())
  one, loop = report["measured"]["one program"][0], report["measured"]["shell loop"][0]
  assert one["processes"] == 1 and loop["processes"] == 4
  assert report["ratio"] == [loop["wall"] / one["wall"]]
  assert "| shell loop | 4 |" in (tmp_path / "sweep_cost.md").read_text()


def test_multihost_cost_times_the_stop_agreement():
  result = _run("multihost_cost", "--processes=2", "--calls=20")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "one stop agreement of 2 processes on localhost took a median" in result.stdout


def test_fixed_cost_times_the_loops_and_jax_scan_and_breaks_an_epoch_down():
  result = _run("fixed_cost", "--steps=1,2", "--epochs=3,3", "--repeats=1",
                "--breakdown_repeats=1")
  assert result.returncode == 0, result.stderr[-3000:]
  for system in ("mnist_jax", "mnist_jax_while_saving", "mnist_jax_every_save",
                 "mnist_jax_no_checkpoints", "jax_scan"):
    assert f"| {system} | " in result.stdout
  for part in ("| compiled epoch (dispatch to results) |", "| TensorBoard (Writer.write) |",
               "| checkpoint save (Checkpointer.save) |", "| the loop's own lines (the rest) |"):
    assert part in result.stdout
  assert "failed" not in result.stdout.lower()


def test_accelerator_runs_collect_run_files_without_checkpoints_within_the_budget(tmp_path):
  """accelerator_runs.sh --smoke: a Ladder step runs and its files come back, never its
  checkpoints; a step whose estimate no longer fits is skipped, and an unknown one refused."""
  script = str(REPO / "experiments" / "benchmarks" / "accelerator_runs.sh")
  out = tmp_path / "out"
  result = subprocess.run(["bash", script, str(out), "600", "ladder_single", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (out / "steps.txt").read_text().startswith("ladder_single: exit 0 after ")
  run = out / "ladder_single" / "run"
  summary = json.loads((run / "summary.json").read_text())
  assert summary["epochs"] == 2 and 0 < summary["test_accuracy"] <= 1
  assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()
  assert not list(run.glob("checkpoints*")) and not (run / ".lock").exists()

  skipped = subprocess.run(["bash", script, str(tmp_path / "late"), "5", "ladder_tfds"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
  assert skipped.returncode == 0 and "ladder_tfds: skipped, " in skipped.stdout
  unknown = subprocess.run(["bash", script, str(tmp_path / "x"), "5", "ladder"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
  assert unknown.returncode == 2 and "Unknown step 'ladder'. The steps are:" in unknown.stderr


def test_recompute_order_retests_a_run_in_its_stored_and_in_random_orders(tmp_path):
  run = tmp_path / "run"
  run_cli("--config=best_ladder", "--config.data.source=idx", "--config.data.train_subset=2000",
          "--config.model.hidden_sizes=(32,16)",
          "--config.model.denoising_weights=(1000.0,1.0,0.01,0.01)", "--config.train.epochs=1",
          "--config.optimizer.decay_epochs=1", "--config.num_seeds=1", f"--workdir={run}",
          "--noreport")
  result = _run("recompute_order", "--orders=2", str(run))
  assert result.returncode == 0, result.stderr[-3000:]

  ratios = dict(re.findall(r"^\| `(\w+)` \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|$", result.stdout,
                             re.MULTILINE))
  assert float(ratios["idx"]) < 0.99 < float(ratios["tfds"])  # idx stores alike images together
  row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {run} |"))
  checkpoint, stored, *randoms = (int(n) for n in row.split("|")[3:-1])
  assert checkpoint == stored and len(randoms) == 2  # the stored order is the run's own pass
  assert 0 < checkpoint < 10_000
