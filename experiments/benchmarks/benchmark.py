"""Side-by-side training benchmark: mnist_jax against Keras 3 (TensorFlow and JAX backends), PyTorch
and a hand-written JAX scan.

    python -m experiments.benchmarks.benchmark       # from the repository root; or ./run.sh bench
    python -m experiments.benchmarks.benchmark --configs=rmsprop_mlp --epochs=2 --repeats=1 --skip_launch

For each config (default: adam_mlp, rmsprop_mlp, sigmoid_mlp) and each repeat, every system trains
the same model (layers, activations, glorot-uniform init, optimizer and its hyperparameters, batch
size) on the same preprocessed arrays for --epochs epochs, one system after the other (interleaved,
so machine noise spreads over all of them). Each run is a fresh subprocess of this program
(`--worker=SYSTEM`, the protocol of workers.py): Keras fixes its backend per process, and every
system starts equally cold. The workers are in systems.py and torch_workers.py, the launch
measurement and the statistics in measure.py, the table in table.py.

  mnist_jax  our trainer's own compiled epoch as `python -m mnist_jax.main` builds it
             (`workers.time_epochs`: `trainer.Trainer`, replicas included), without the persistent
             compilation cache, so the first epoch includes a real compilation. Each epoch is
             timed to `jax.block_until_ready`.
  keras_tf   Keras 3, TensorFlow backend: Sequential of Dense layers, softmax output,
  keras_jax  sparse categorical cross-entropy, metrics=["accuracy"], compiled with Keras's defaults
             (jit_compile="auto"), one `model.fit(epochs=N, shuffle=True, verbose=0)`; a callback
             records the epoch boundaries (the first epoch is timed from the call to fit).
  torch      PyTorch, eager (on CUDA when present, the data on the device): nn.Sequential,
             torch.optim with Keras's hyperparameters, a plain loop over `torch.randperm` batches
             (no DataLoader).
  torch_cudagraph  the same, with one training step (forward, loss, backward, optimizer step)
             captured in a `torch.cuda.CUDAGraph` after a few warm-up steps and replayed per
             batch, each batch gathered into the capture's input tensors; full batches only, like
             jax_scan. CUDA only: elsewhere it is reported as "skipped (no CUDA device)".
  jax_scan   the floor of plain JAX: the same model written out by hand in ~40 lines (parameters
             as a list of (kernel, bias), optax with Keras's hyperparameters, `jax.jit` with XLA's
             default options), one `lax.scan` per epoch over a device-side permutation; no masks,
             metrics or checkpoints, and full batches only (the tail that does not fill a batch is
             dropped: 96 of rmsprop_mlp's 60,000 examples, 608 of sigmoid_mlp's; its GFLOP/s count
             only the examples trained on). Against it, ours/peer shows what mnist_jax's own
             machinery costs or saves. No dropout.

A system whose packages are missing is reported as "not installed" and skipped.

Reported per config and system: first-epoch seconds (includes compilation/tracing), steady-state
s/epoch min and median (all epochs but the first, over all repeats), our median / the system's median,
test accuracy, achieved GFLOP/s and its fraction of this machine's fp32 matmul peak (jnp.dot on
2048x2048, measured in the same run, with XLA's default options and with mnist_jax's
`cpu_tuning.COMPILER_OPTIONS`; the better counts). FLOPs are those really done per example: 2 per
multiply-add in the forward pass, the same again for the weight gradients, and the same again for
the gradients of each layer's input except the first (no gradient for the images):
6*sum(in*out) - 2*in0*out0.

Also measured (skip with --skip_launch): launch-to-result, the wall time of
`python -m mnist_jax.main --config=adam_mlp` from process start to exit, the first with an empty
JAX compilation cache, the later ones using it.

Writes benchmark.json (everything, raw epoch times included) and benchmark.md (the table) to --out.
"""

import json
import pathlib
import shutil
import sys
import tempfile
import time

from absl import flags

from experiments.benchmarks import torch_workers
from experiments.benchmarks.measure import measure_launch, summarize_system
from experiments.benchmarks.systems import (
  REQUIRES,
  SYSTEMS,
  flops_per_example,
  installed,
  layer_sizes,
  peer_support,
  worker_jax_scan,
  worker_keras,
  worker_mnist_jax,
  worker_peak,
  worker_prepare,
)
from experiments.benchmarks.table import markdown
from experiments.benchmarks.workers import flag_args, machine_info
from experiments.benchmarks.workers import run_worker as _run_worker
from mnist_jax import cli, errors

PROGRAM = "experiments.benchmarks.benchmark"

DEFAULT_CONFIGS = ("adam_mlp", "rmsprop_mlp", "sigmoid_mlp")

flags.DEFINE_string("configs", ",".join(DEFAULT_CONFIGS), "Comma-separated experiment names.")
flags.DEFINE_integer("epochs", 6, "Timed epochs per system, config and repeat; the first includes "
                     "compilation.")
flags.DEFINE_integer("repeats", 2, "Times each system trains each config, interleaved.")
flags.DEFINE_string("systems", ",".join(SYSTEMS), "Comma-separated subset of " + ",".join(SYSTEMS))
flags.DEFINE_string("out", "runs/benchmark", "Directory for benchmark.json and benchmark.md.")
flags.DEFINE_integer("launch_runs", 4, "Launch-to-result runs of adam_mlp; the first fills the "
                     "compilation cache, the others are reported (0 skips).")
flags.DEFINE_bool("skip_launch", False, "Do not measure launch-to-result (--launch_runs=0).")
flags.DEFINE_string("launch_source", "", "--config.data.source for the launch runs (default: the "
                    "config's own).")
flags.DEFINE_integer("peak_size", 2048, "Matrix size of the matmul peak.")
flags.DEFINE_integer("peak_reps", 10, "Products timed for the matmul peak.")
flags.DEFINE_float("timeout", 1800, "Seconds after which one worker run is abandoned.")
# Internal: a subprocess running one system.
flags.DEFINE_string("worker", None, "(internal) run one worker: " + ", ".join(
    ("prepare", "peak", *SYSTEMS)))
flags.DEFINE_string("config", None, "(internal) the worker's config.")
flags.DEFINE_integer("seed", 0, "(internal) the worker's seed.")
flags.DEFINE_string("arrays", None, "(internal) the prepared arrays (.npz).")
flags.DEFINE_string("arrays_dir", None, "(internal) where the prepare worker writes them.")

WORKERS = {"prepare": worker_prepare, "peak": worker_peak, "mnist_jax": worker_mnist_jax,
           "jax_scan": worker_jax_scan, "keras_tf": worker_keras, "keras_jax": worker_keras,
           "torch": torch_workers.worker_torch,
           "torch_cudagraph": torch_workers.worker_torch_cudagraph}


def run_worker(worker: str, extra: list[str], timeout: float, env: dict = None):
  return _run_worker(PROGRAM, worker, extra, timeout, env)


def main(argv: list[str]) -> int:
  del argv
  args = flag_args()
  if args.epochs < 1 or args.repeats < 1:
    raise errors.ConfigError("--epochs and --repeats must be at least 1.")
  unknown = set(args.systems.split(",")) - set(SYSTEMS)
  if unknown:
    raise errors.ConfigError(f"Unknown --systems {', '.join(sorted(unknown))}: choose from "
                             f"{', '.join(SYSTEMS)}.")
  if args.worker:
    WORKERS[args.worker](args)
    return 0

  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  configs = [c for c in args.configs.split(",") if c]
  systems = [s for s in args.systems.split(",") if s]
  loaded = {name: config_lib.load(name) for name in configs}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  wall_started = time.perf_counter()
  log = lambda message: print(message, file=sys.stderr, flush=True)
  command = f"python -m {PROGRAM} " + " ".join(sys.argv[1:])
  failures = []

  available = {s: installed(s) for s in systems}
  for s in systems:
    if not available[s]:
      log(f"{s}: not installed ({', '.join(REQUIRES[s])}); skipped.")

  log("Measuring the fp32 matmul peak ...")
  peak_samples = []
  records, error = run_worker("peak", [f"--peak_size={args.peak_size}",
                                       f"--peak_reps={args.peak_reps}"], args.timeout)
  if error:
    log(f"peak measurement failed: {error}")
    failures.append(f"peak: {error}")
  peak_samples += records
  if peak_samples:
    log(f"  {peak_samples[-1]['gflops']:.1f} GFLOP/s")

  scratch = pathlib.Path(tempfile.mkdtemp(prefix="mnist_jax_bench_"))
  results = {}
  try:
    log("Loading and preprocessing the data (data.load + data.preprocess) ...")
    records, error = run_worker("prepare", [f"--configs={','.join(configs)}",
                                            f"--arrays_dir={scratch}"], args.timeout)
    if error:
      print(f"ERROR: preparing the data failed: {error}", file=sys.stderr)
      return 1
    arrays = {r["config"]: r for r in records}
    for name, cfg in loaded.items():
      sizes = layer_sizes(cfg)
      n_train = arrays[name]["train"]
      results[name] = {
          "layers": sizes, "batch_size": cfg.train.batch_size, "optimizer": cfg.optimizer.name,
          "activation": cfg.model.activation, "train_examples": n_train,
          "test_examples": arrays[name]["test"], "data_source": arrays[name]["source"],
          "flops_per_example": flops_per_example(sizes),
          "flops_per_epoch": flops_per_example(sizes) * n_train,
          "runs": {s: [] for s in systems}, "systems": {}}
      for s in systems:
        if not available[s]:
          results[name]["systems"][s] = {"status": "not installed"}
        elif s != "mnist_jax" and (unsupported := peer_support(cfg, s)):
          results[name]["systems"][s] = {"status": f"unsupported ({unsupported})"}

    for repeat in range(args.repeats):
      for name, cfg in loaded.items():
        for s in systems:
          if "status" in results[name]["systems"].get(s, {}):
            continue
          seed = cfg.seed + repeat
          extra = [f"--config={name}", f"--epochs={args.epochs}", f"--seed={seed}",
                   f"--arrays={arrays[name]['arrays']}"]
          started = time.perf_counter()
          records, error = run_worker(s, extra, args.timeout)
          if error:
            log(f"[{repeat + 1}/{args.repeats}] {name} {s}: FAILED {error}")
            failures.append(f"{name} {s}: {error}")
            results[name]["systems"][s] = {"status": "failed (see benchmark.json)", "error": error}
            continue
          run = records[-1]
          if "skipped" in run:  # this machine lacks what the system needs: no row is measured
            log(f"{s}: skipped ({run['skipped']}); not measured.")
            for entry in results.values():
              entry["systems"].setdefault(s, {"status": f"skipped ({run['skipped']})"})
            continue
          run.update(seed=seed, repeat=repeat, wall_seconds=time.perf_counter() - started)
          results[name]["runs"][s].append(run)
          log(f"[{repeat + 1}/{args.repeats}] {name} {s}: epochs "
              + " ".join(f"{t:.2f}" for t in run["epoch_seconds"])
              + f" s; test accuracy {run['test_accuracy']:.4f} ({run['wall_seconds']:.0f} s in all)")

    launch = None
    if args.launch_runs > 0 and not args.skip_launch:
      log(f"Launch-to-result: {args.launch_runs} runs of python -m mnist_jax.main --config=adam_mlp ...")
      launch = measure_launch(args.launch_runs, args.launch_source, args.timeout)
      if "error" in launch:
        failures.append(f"launch: {launch['error']}")

    log("Measuring the fp32 matmul peak again ...")
    records, error = run_worker("peak", [f"--peak_size={args.peak_size}",
                                         f"--peak_reps={args.peak_reps}"], args.timeout)
    peak_samples += records
    if peak_samples:
      log(f"  {peak_samples[-1]['gflops']:.1f} GFLOP/s")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  peak = max(peak_samples, key=lambda r: r["gflops"]) if peak_samples else {}
  for entry in results.values():
    for s in systems:
      if entry["runs"][s] and "status" not in entry["systems"].get(s, {}):
        entry["systems"][s] = summarize_system(entry["runs"][s], entry["flops_per_epoch"],
                                               peak.get("gflops"))
  report = {"command": command, "machine": machine_info(), "peak": peak,
            "peak_samples": peak_samples, "args": {**vars(args), "systems": systems},
            "results": results, "launch": launch,
            "benchmark_wall_seconds": time.perf_counter() - wall_started,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "errors": failures}
  table = markdown(report)
  (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / "benchmark.md").write_text(table)
  print(table, end="")
  log(f"Wrote {out / 'benchmark.md'} and {out / 'benchmark.json'} "
      f"({report['benchmark_wall_seconds']:.0f} s in all).")
  if failures:
    log(f"{len(failures)} part(s) failed: see above and benchmark.json.")
  return 1 if failures else 0


if __name__ == "__main__":
  cli.start(main)
