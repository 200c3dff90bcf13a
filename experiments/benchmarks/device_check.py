"""One-command check of whatever accelerator JAX sees: does everything work there, and how fast.

    python -m experiments.benchmarks.device_check                 # full: about 8 minutes on a GPU
    python -m experiments.benchmarks.device_check --quick         # a minute on a CPU (the tests run it)

Checks, each in fresh processes as a user runs them:
  1. every tutorial config trains 2 epochs through the CLI (exit 0, test accuracy printed);
  2. two identical runs end with bit-identical parameters;
  3. a run killed (SIGKILL) after its first checkpoint and run again ends exactly like a straight run;
  4. steady s/epoch of adam_mlp, rmsprop_mlp and sigmoid_mlp, for mnist_jax and the hand-written
     jax_scan (the benchmark's workers);
  5. vmapped seeds of adam_mlp (1, 8, 64, 512 replicas): s/epoch and cost per seed.
Writes device_check.md and device_check.json to --out. Needs only jax, flax, optax, orbax,
absl-py, ml-collections, numpy (the idx data source; no TensorFlow, no tensorflow-datasets).
"""

import json
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from experiments.benchmarks.workers import (
  REPO_ROOT,
  emit,
  flag_args,
  jax_device_name,
  machine_info,
  quiet_env,
  run_worker,
  time_epochs,
)
from mnist_jax import cli

PROGRAM = "experiments.benchmarks.device_check"
TUTORIALS = ("adam_mlp", "adam_mlp_784", "adam_mlp_784_dropout", "rmsprop_mlp", "sigmoid_mlp",
             "sgd_bn_mlp")
TIMED = ("adam_mlp", "rmsprop_mlp", "sigmoid_mlp")


def _cli(workdir, config, extra, timeout=600):
  command = [sys.executable, "-m", "mnist_jax.main", f"--config={config}", f"--workdir={workdir}",
             "--config.data.source=idx", "--noreport", *extra]
  return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                        env=quiet_env())


def _params(workdir):
  """The last checkpoint's arrays as numpy, restored in this process."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  return [np.asarray(x) for x in jax.tree.leaves(workdir_lib.load_run(workdir).state)]


def _identical(a, b) -> bool:
  import numpy as np  # pylint: disable=import-outside-toplevel
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def check_tutorials(tmp, configs, extra) -> list[dict]:
  return [_tutorial_row(name, _cli(tmp / f"tutorial_{name}", name,
                                   ["--config.train.epochs=2", *extra])) for name in configs]


def _tutorial_row(name, result) -> dict:
  accuracy = [line for line in result.stdout.splitlines() if "test accuracy" in line]
  return {"config": name, "exit": result.returncode,
          "printed": accuracy[-1].strip() if accuracy else None,
          "ok": result.returncode == 0 and bool(accuracy),
          "error": "" if result.returncode == 0 else result.stderr.strip()[-500:]}


def check_bit_identity_and_resume(tmp, extra) -> dict:
  """adam_mlp with input dropout (so the keys must resume too), long enough for a kill to land."""
  flags = ["--config.train.epochs=8", "--config.model.input_dropout=0.2", *extra]
  runs = [_cli(tmp / f"same_{k}", "adam_mlp", flags) for k in (0, 1)]
  identical = all(r.returncode == 0 for r in runs) and _identical(
      _params(tmp / "same_0"), _params(tmp / "same_1"))
  killed = tmp / "killed"
  process = subprocess.Popen(
      [sys.executable, "-m", "mnist_jax.main", "--config=adam_mlp", f"--workdir={killed}",
       "--config.data.source=idx", "--noreport", *flags], cwd=REPO_ROOT, env=quiet_env(),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  # The first checkpoint complete: committed by orbax and its checksums written.
  while not (killed / "checkpoints" / "1" / "sha256.json").exists() and process.poll() is None:
    if time.monotonic() > deadline:
      break
    time.sleep(0.005)
  process.send_signal(signal.SIGKILL)
  process.wait()
  landed = not (killed / "summary.json").exists()
  resumed = _cli(killed, "adam_mlp", flags) if landed else None
  resume_exact = bool(landed and resumed.returncode == 0 and _resumed_from(killed) >= 1
                      and _identical(_params(killed), _params(tmp / "same_0")))
  return {"bit_identical": identical, "kill_landed_mid_run": landed,
          "resume_exact": resume_exact, "ok": identical and resume_exact,
          "first_run": _tutorial_row("adam_mlp", runs[0])}


def _resumed_from(workdir: pathlib.Path) -> int:
  """The epoch the run's last process started from (environment.jsonl): 0 for a restart, which
  would end bit-identical too."""
  path = workdir / "environment.jsonl"
  return json.loads(path.read_text().splitlines()[-1])["from_epoch"] if path.exists() else 0


def time_systems(configs, epochs, timeout) -> list[dict]:
  """The benchmark's own workers: mnist_jax's trainer and the hand-written jax_scan."""
  bench = "experiments.benchmarks.benchmark"
  rows = []
  with tempfile.TemporaryDirectory() as arrays_dir:
    prepared, error = run_worker(bench, "prepare", [f"--configs={','.join(configs)}",
                                                    f"--arrays_dir={arrays_dir}"], timeout)
    if error:
      return [{"error": f"prepare: {error}"}]
    arrays = {r["config"]: r["arrays"] for r in prepared}
    for name in configs:
      for system in ("mnist_jax", "jax_scan"):
        records, error = run_worker(bench, system, [f"--config={name}", f"--epochs={epochs}",
                                                    f"--arrays={arrays[name]}"], timeout)
        seconds = records[-1]["epoch_seconds"] if records else []
        rows.append({"config": name, "system": system, "error": error,
                     "first_epoch": seconds[0] if seconds else None,
                     "steady_median": statistics.median(seconds[1:]) if len(seconds) > 1 else None,
                     "steady_min": min(seconds[1:]) if len(seconds) > 1 else None})
  return rows


def worker_seeds(args) -> None:
  """In a fresh process: s/epoch of adam_mlp with each number of vmapped seeds."""
  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  for seeds in json.loads(args.seeds):
    config = config_lib.load("adam_mlp")
    config.data.source, config.num_seeds = "idx", seeds
    if args.train_subset:
      config.data.train_subset = args.train_subset
    seconds = time_epochs(config, args.epochs)["epoch_seconds"]
    emit({"seeds": seeds, "first_epoch": seconds[0], "steady_median": statistics.median(seconds[1:]),
          "device": jax_device_name()})


def markdown(report: dict) -> str:
  m = report["machine"]
  lines = [f"Command: `{report['command']}` ({report['date']}, {report['seconds'] / 60:.1f} min)",
           "", f"Device: {report['device']}; host {m['cpu']}, {m['cores']} cores; "
           f"jax {m['versions']['jax']}, flax {m['versions']['flax']}", "",
           "| check | result |", "| --- | --- |"]
  for row in report["tutorials"]:
    lines.append(f"| {row['config']}, 2 epochs via the CLI | "
                 f"{'ok' if row['ok'] else 'FAILED (exit %d)' % row['exit']}: {row['printed']} |")
  r = report["reproducibility"]
  lines += [f"| two identical runs, bit-identical parameters | {'yes' if r['bit_identical'] else 'NO'} |",
            f"| SIGKILL after the first checkpoint, rerun = straight run | "
            f"{'yes' if r['resume_exact'] else 'NO'} |", "",
            "| config | system | first epoch s | steady s/epoch median | min |",
            "| --- | --- | --- | --- | --- |"]
  fmt = lambda x, spec=".4f": "n/a" if x is None else format(x, spec)
  for row in report["timings"]:
    lines.append(f"| {row.get('config')} | {row.get('system')} | {fmt(row.get('first_epoch'), '.2f')} "
                 f"| {fmt(row.get('steady_median'))} | {fmt(row.get('steady_min'))} |")
  lines += ["", "| vmapped seeds of adam_mlp | first epoch s | steady s/epoch | per seed | vs 1 seed |",
            "| --- | --- | --- | --- | --- |"]
  one = report["seeds"][0]["steady_median"] if report["seeds"] else None
  for row in report["seeds"]:
    lines.append(f"| {row['seeds']} | {row['first_epoch']:.2f} | {row['steady_median']:.4f} "
                 f"| {row['steady_median'] / row['seeds']:.5f} | {row['steady_median'] / one:.2f}x |")
  return "\n".join(lines) + "\n"


flags.DEFINE_bool("quick", False, "Small subsets, adam_mlp only, seeds 1 and 4: for CPUs and the "
                  "tests.")
flags.DEFINE_string("out", "runs/device_check", "Directory for device_check.json and .md.")
flags.DEFINE_float("timeout", 900, "Seconds after which one worker run is abandoned.")
flags.DEFINE_string("worker", None, "(internal) run one worker: seeds.")
flags.DEFINE_string("seeds", None, "(internal) the seeds worker's replica counts (JSON).")
flags.DEFINE_integer("epochs", 4, "(internal) the seeds worker's epochs.")
flags.DEFINE_integer("train_subset", 0, "(internal) the seeds worker's training subset.")


def main(argv: list[str]) -> int:
  del argv
  args = flag_args()
  if args.worker:
    worker_seeds(args)
    return 0
  started = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="mnist_jax_device_check_") as tmp:
    tmp = pathlib.Path(tmp)
    reproducibility = check_bit_identity_and_resume(
        tmp, ["--config.data.train_subset=10000"] if args.quick else [])
    # Quick: the CLI run of adam_mlp above stands for the tutorials.
    tutorials = ([reproducibility.pop("first_run")] if args.quick else
                 check_tutorials(tmp, TUTORIALS, []))
    reproducibility.pop("first_run", None)
  timings = time_systems(TIMED[:1] if args.quick else TIMED, 2 if args.quick else 6, args.timeout)
  seeds, error = run_worker(PROGRAM, "seeds", [
      f"--seeds={json.dumps([1, 4] if args.quick else [1, 8, 64, 512])}",
      f"--epochs={2 if args.quick else 4}", f"--train_subset={1024 if args.quick else 0}"],
      args.timeout)
  report = {"command": f"python -m {PROGRAM} " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(),
            "device": seeds[0]["device"] if seeds else "unknown", "tutorials": tutorials,
            "reproducibility": reproducibility, "timings": timings, "seeds": seeds,
            "errors": [error] if error else [], "seconds": time.perf_counter() - started}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / "device_check.md").write_text(markdown(report))
  print(markdown(report), end="")
  ok = (all(r["ok"] for r in tutorials) and reproducibility["ok"] and not report["errors"]
        and all(not r.get("error") for r in timings))
  return 0 if ok else 1


if __name__ == "__main__":
  cli.start(main)
