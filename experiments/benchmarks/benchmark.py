"""Side-by-side training benchmark: mnist_jax against Keras 3 (TensorFlow and JAX backends), PyTorch
and a hand-written JAX scan.

    python -m experiments.benchmarks.benchmark       # from the repository root; or ./run.sh bench
    python -m experiments.benchmarks.benchmark --configs=rmsprop_mlp --epochs=2 --repeats=1 --skip_launch

For each config (default: adam_mlp, rmsprop_mlp, sigmoid_mlp) and each repeat, every system trains
the same model (layers, activations, glorot-uniform init, optimizer and its hyperparameters, batch
size) on the same preprocessed arrays for --epochs epochs, one system after the other (interleaved,
so machine noise spreads over all of them). Each run is a fresh subprocess of this program
(`--worker=SYSTEM`, the protocol of workers.py): Keras fixes its backend per process, and every
system starts equally cold.

  mnist_jax  our trainer's own compiled epoch as `python -m mnist_jax.main` builds it
             (`workers.time_epochs`: `trainer.Trainer`, replicas included), without the persistent
             compilation cache, so the first epoch includes a real compilation. Each epoch is
             timed to `jax.block_until_ready`.
  keras_tf   Keras 3, TensorFlow backend: Sequential of Dense layers, softmax output,
  keras_jax  sparse categorical cross-entropy, metrics=["accuracy"], compiled with Keras's defaults
             (jit_compile="auto"), one `model.fit(epochs=N, shuffle=True, verbose=0)`; a callback
             records the epoch boundaries (the first epoch is timed from the call to fit).
  torch      PyTorch: nn.Sequential, torch.optim with Keras's hyperparameters, a plain loop over
             `torch.randperm` batches (no DataLoader).
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

import functools
import importlib.util
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

from experiments.benchmarks.workers import (
  REPO_ROOT,
  emit,
  flag_args,
  jax_device_name,
  machine_info,
  quiet_env,
)
from experiments.benchmarks.workers import run_worker as _run_worker
from mnist_jax import cli, errors

PROGRAM = "experiments.benchmarks.benchmark"

SYSTEMS = ("mnist_jax", "jax_scan", "keras_tf", "keras_jax", "torch")
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
# Python modules each system needs; a missing one means "not installed", never an error.
REQUIRES = {
    "mnist_jax": ("jax", "flax", "optax"),
    "jax_scan": ("jax", "optax"),
    "keras_tf": ("keras", "tensorflow"),
    "keras_jax": ("keras", "jax"),
    "torch": ("torch",),
}


# ---------------------------------------------------------------------------------------------
# Model description shared by all systems


def load_config(name: str):
  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.load(name)


def layer_sizes(cfg, input_dim: int = 784) -> list[int]:
  return [input_dim, *[int(h) for h in cfg.model.hidden_sizes], int(cfg.model.num_classes)]


def flops_per_example(sizes: list[int]) -> int:
  """Training FLOPs really done per example: forward, weight gradients, input gradients but the first."""
  macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
  return 2 * sum(macs) + 2 * sum(macs) + 2 * sum(macs[1:])


def peer_support(cfg, system: str) -> str:
  """'' if the peer `system` can build this config exactly, else why not."""
  m, o = cfg.model, cfg.optimizer
  problems = []
  if system == "jax_scan" and any(m.dropout):
    problems.append("dropout")
  if m.input_batchnorm or m.input_dropout:
    problems.append("input BatchNorm/Dropout")
  if m.hidden_batchnorm or m.gaussian_noise:
    problems.append("hidden BatchNorm/Gaussian noise")
  if m.kernel_init != "glorot_uniform":
    problems.append(f"kernel_init={m.kernel_init}")
  if o.name not in ("adam", "rmsprop", "sgd") or o.schedule != "constant" or o.grad_clip_norm:
    problems.append(f"optimizer {o.name}/{o.schedule}/clip={o.grad_clip_norm}")
  if o.max_norm or cfg.train.ema_decay:
    problems.append(f"max_norm={o.max_norm}/ema_decay={cfg.train.ema_decay}")
  if cfg.train.label_smoothing:
    problems.append("label smoothing")
  return ", ".join(problems)


# ---------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints MARKER lines


def worker_prepare(args) -> None:
  """Load and preprocess each config's splits exactly as mnist_jax does; save them as .npz."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from mnist_jax import data  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(args.arrays_dir)
  out.mkdir(parents=True, exist_ok=True)
  for name in args.configs.split(","):
    cfg = load_config(name)
    path = out / f"{name}.npz"
    splits = data.load(cfg.data)
    np.savez(path,
             x_train=np.asarray(data.preprocess(splits.train.images, cfg.data.preprocess), np.float32),
             y_train=splits.train.labels.astype(np.int32),
             x_test=np.asarray(data.preprocess(splits.test.images, cfg.data.preprocess), np.float32),
             y_test=splits.test.labels.astype(np.int32))
    emit({"config": name, "arrays": str(path), "source": splits.source,
          "train": len(splits.train), "test": len(splits.test)})


def worker_peak(args) -> None:
  """Best fp32 matmul rate of jnp.dot on n x n (jit), and what JAX runs on.

  Measured with XLA's default options and with mnist_jax's (cpu_tuning.COMPILER_OPTIONS), alternately;
  the better of the two is the peak.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from mnist_jax import cpu_tuning  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_enable_compilation_cache", False)
  n = args.peak_size
  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (n, n), jnp.float32)
  y = jax.random.normal(ky, (n, n), jnp.float32)
  options = {"xla_default": {}, "mnist_jax": cpu_tuning.COMPILER_OPTIONS}
  dots = {name: jax.jit(jnp.dot).lower(x, y).compile(compiler_options=o)
          for name, o in options.items() if name == "xla_default" or o}
  for dot in dots.values():
    jax.block_until_ready(dot(x, y))
  started = time.perf_counter()
  jax.block_until_ready(dots["xla_default"](x, y))
  inner = max(1, int(0.05 / max(time.perf_counter() - started, 1e-9)))  # >= 50 ms per sample
  best = {name: math.inf for name in dots}
  for _ in range(args.peak_reps):
    for name, dot in dots.items():
      started = time.perf_counter()
      for _ in range(inner):
        z = dot(x, y)
      jax.block_until_ready(z)
      best[name] = min(best[name], (time.perf_counter() - started) / inner)
  fastest = min(best, key=best.get)
  device = jax.devices()[0]
  emit({"gflops": 2 * n ** 3 / best[fastest] / 1e9, "seconds": best[fastest], "n": n,
        "calls_per_sample": inner, "options": fastest,
        "gflops_by_options": {name: 2 * n ** 3 / s / 1e9 for name, s in best.items()},
        "platform": device.platform, "device_kind": device.device_kind,
        "devices": len(jax.devices())})


def worker_mnist_jax(args) -> None:
  from experiments.benchmarks.workers import time_epochs  # pylint: disable=import-outside-toplevel
  cfg = load_config(args.config)
  cfg.seed = args.seed
  emit(time_epochs(cfg, args.epochs))


def worker_keras(args) -> None:
  backend = {"keras_tf": "tensorflow", "keras_jax": "jax"}[args.worker]
  os.environ["KERAS_BACKEND"] = backend
  import numpy as np  # pylint: disable=import-outside-toplevel
  if backend == "jax":
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_enable_compilation_cache", False)
  import keras  # pylint: disable=import-outside-toplevel
  assert keras.backend.backend() == backend, keras.backend.backend()
  cfg = load_config(args.config)
  arrays = np.load(args.arrays)
  x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
  keras.utils.set_random_seed(args.seed)

  m = cfg.model
  layers = [keras.Input(shape=(x_train.shape[1],))]
  rates = tuple(m.dropout) or (0.0,) * len(m.hidden_sizes)
  for width, rate in zip(m.hidden_sizes, rates):
    layers.append(keras.layers.Dense(int(width), activation=m.activation,
                                     kernel_initializer=m.kernel_init))
    if rate:
      layers.append(keras.layers.Dropout(rate))
  layers.append(keras.layers.Dense(int(m.num_classes), activation="softmax",
                                   kernel_initializer=m.kernel_init))
  model = keras.Sequential(layers)
  o = cfg.optimizer
  if o.name == "adam":
    optimizer = keras.optimizers.Adam(o.learning_rate, beta_1=o.b1, beta_2=o.b2, epsilon=o.eps)
  elif o.name == "rmsprop":
    optimizer = keras.optimizers.RMSprop(o.learning_rate, rho=o.rho, momentum=o.momentum,
                                         epsilon=o.eps)
  else:
    optimizer = keras.optimizers.SGD(o.learning_rate, momentum=o.momentum, nesterov=o.nesterov)
  model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])

  class EpochTimes(keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.marks, self.logs = [], {}

    def on_epoch_end(self, epoch, logs=None):
      # Wait for the epoch's last update (JAX dispatches asynchronously) before reading the clock.
      for v in self.model.trainable_variables:
        keras.ops.convert_to_numpy(v.value)
      self.marks.append(time.perf_counter())
      self.logs = {k: float(v) for k, v in (logs or {}).items()}

  times = EpochTimes()
  started = time.perf_counter()
  model.fit(x_train, y_train, batch_size=cfg.train.batch_size, epochs=args.epochs, shuffle=True,
            verbose=0, callbacks=[times])
  marks = [started, *times.marks]
  _, test_accuracy = model.evaluate(x_test, y_test, batch_size=cfg.train.eval_batch_size, verbose=0)
  emit({"epoch_seconds": [b - a for a, b in zip(marks[:-1], marks[1:])],
        "train_loss": times.logs.get("loss"), "train_accuracy": times.logs.get("accuracy"),
        "test_accuracy": float(test_accuracy), "device": keras_device(backend),
        "jit_compile": bool(model.jit_compile)})


def worker_jax_scan(args) -> None:
  """The same model as a short hand-written JAX program: what plain JAX does without mnist_jax."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from mnist_jax.models import ACTIVATIONS  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_enable_compilation_cache", False)
  cfg = load_config(args.config)
  arrays = np.load(args.arrays)
  x_train, y_train, x_test, y_test = (jnp.asarray(arrays[k])
                                      for k in ("x_train", "y_train", "x_test", "y_test"))
  m, o = cfg.model, cfg.optimizer
  activation = ACTIVATIONS[m.activation]  # jax.nn's functions, as mnist_jax's model uses them
  sizes = layer_sizes(cfg, x_train.shape[1])
  init_key, epochs_key = jax.random.split(jax.random.key(args.seed))
  glorot = jax.nn.initializers.glorot_uniform()
  params = [(glorot(k, (a, b)), jnp.zeros((b,)))
            for k, a, b in zip(jax.random.split(init_key, len(sizes) - 1), sizes[:-1], sizes[1:])]
  if o.name == "adam":
    tx = optax.adam(o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
  elif o.name == "rmsprop":
    tx = optax.rmsprop(o.learning_rate, decay=o.rho, eps=o.eps, eps_in_sqrt=True,
                       momentum=o.momentum or None)
  else:
    tx = optax.sgd(o.learning_rate, momentum=o.momentum or None, nesterov=o.nesterov)
  opt_state = tx.init(params)

  def logits_of(params, x):
    for w, b in params[:-1]:
      x = activation(x @ w + b)
    w, b = params[-1]
    return x @ w + b

  def loss_of(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_of(params, x), y).mean()

  batch_size = cfg.train.batch_size
  num_batches = x_train.shape[0] // batch_size  # full batches only: the tail is dropped

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_epoch(params, opt_state, images, labels, key):
    order = jax.random.permutation(key, images.shape[0])[:num_batches * batch_size]

    def step(carry, idx):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_of)(params, images[idx], labels[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               order.reshape(num_batches, batch_size))
    return params, opt_state, losses.mean()

  seconds = []
  for epoch in range(args.epochs):
    started = time.perf_counter()
    params, opt_state, train_loss = train_epoch(params, opt_state, x_train, y_train,
                                                jax.random.fold_in(epochs_key, epoch))
    jax.block_until_ready((params, opt_state, train_loss))
    seconds.append(time.perf_counter() - started)
  test_accuracy = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(logits_of(p, x), -1) == y))(
      params, x_test, y_test)
  emit({"epoch_seconds": seconds, "train_loss": float(train_loss),
        "test_accuracy": float(test_accuracy), "device": jax_device_name(),
        "examples_per_epoch_fraction": num_batches * batch_size / x_train.shape[0]})


def keras_device(backend: str) -> str:
  if backend == "jax":
    return jax_device_name()
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  gpus = tf.config.list_physical_devices("GPU")
  return "gpu" if gpus else "cpu"


def worker_torch(args) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  cfg = load_config(args.config)
  arrays = np.load(args.arrays)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  x_train = torch.from_numpy(arrays["x_train"]).to(device)
  y_train = torch.from_numpy(arrays["y_train"]).long().to(device)
  x_test = torch.from_numpy(arrays["x_test"]).to(device)
  y_test = torch.from_numpy(arrays["y_test"]).long().to(device)
  torch.manual_seed(args.seed)

  m = cfg.model
  activation = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
                "elu": nn.ELU, "swish": nn.SiLU}[m.activation]
  modules, width_in = [], x_train.shape[1]
  rates = tuple(m.dropout) or (0.0,) * len(m.hidden_sizes)
  for width, rate in zip(m.hidden_sizes, rates):
    modules += [nn.Linear(width_in, int(width)), activation()]
    if rate:
      modules.append(nn.Dropout(rate))
    width_in = int(width)
  modules.append(nn.Linear(width_in, int(m.num_classes)))
  model = nn.Sequential(*modules).to(device)
  for module in model:
    if isinstance(module, nn.Linear):  # Keras's Dense defaults
      nn.init.xavier_uniform_(module.weight)
      nn.init.zeros_(module.bias)
  o = cfg.optimizer
  if o.name == "adam":
    optimizer = torch.optim.Adam(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                 eps=o.eps)
  elif o.name == "rmsprop":
    optimizer = torch.optim.RMSprop(model.parameters(), lr=o.learning_rate, alpha=o.rho,
                                    eps=o.eps, momentum=o.momentum)
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=o.learning_rate, momentum=o.momentum,
                                nesterov=o.nesterov)
  loss_fn = nn.CrossEntropyLoss()
  n, batch_size = x_train.shape[0], cfg.train.batch_size

  seconds = []
  for _ in range(args.epochs):
    started = time.perf_counter()
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    perm = torch.randperm(n, device=device)
    for i in range(0, n, batch_size):
      idx = perm[i:i + batch_size]
      xb, yb = x_train[idx], y_train[idx]
      logits = model(xb)
      loss = loss_fn(logits, yb)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      total_loss += loss.detach() * len(idx)
      correct += (logits.detach().argmax(1) == yb).sum()
    train_loss, train_correct = float(total_loss), int(correct)  # waits for the last step
    seconds.append(time.perf_counter() - started)
  model.eval()
  with torch.no_grad():
    test_correct = sum(int((model(x_test[i:i + 2000]).argmax(1) == y_test[i:i + 2000]).sum())
                       for i in range(0, x_test.shape[0], 2000))
  emit({"epoch_seconds": seconds, "train_loss": train_loss / n, "train_accuracy": train_correct / n,
        "test_accuracy": test_correct / x_test.shape[0],
        "device": str(device) + (f":{torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads()})


WORKERS = {"prepare": worker_prepare, "peak": worker_peak, "mnist_jax": worker_mnist_jax,
           "jax_scan": worker_jax_scan, "keras_tf": worker_keras, "keras_jax": worker_keras,
           "torch": worker_torch}


# ---------------------------------------------------------------------------------------------
# Parent: runs the workers, collects, reports


def run_worker(worker: str, extra: list[str], timeout: float, env: dict = None):
  return _run_worker(PROGRAM, worker, extra, timeout, env)


def installed(system: str) -> bool:
  return all(importlib.util.find_spec(module) is not None for module in REQUIRES[system])


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


def fmt(value, spec=".3f", missing="n/a"):
  return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
  m, peak = report["machine"], report["peak"]
  v = m["versions"]
  lines = [
      f"Command: `{report['command']}` ({report['date']}, "
      f"{report['benchmark_wall_seconds'] / 60:.1f} min)",
      "",
      f"Machine: {m['cpu']}, {m['cores']} cores; JAX platform/device: "
      f"{peak.get('platform', '?')} / {peak.get('device_kind', '?')}; {m['os']}",
      f"Versions: python {m['python']}, jax {v['jax']}, flax {v['flax']}, optax {v['optax']}, "
      f"keras {v['keras']}, tensorflow {v['tensorflow']}, torch {v['torch']}",
      f"fp32 matmul peak (jnp.dot {peak.get('n', '?')}x{peak.get('n', '?')}, best of "
      f"{report['args']['peak_reps']} per measurement, best of {len(report['peak_samples'])} "
      f"measurements, the better of XLA's default options and mnist_jax's): "
      f"{fmt(peak.get('gflops'), '.1f')} GFLOP/s",
      f"{report['args']['epochs']} epochs x {report['args']['repeats']} repeats per system and config, "
      f"interleaved; steady = all epochs but each run's first. ours/peer = mnist_jax steady median / "
      f"peer steady median (below 1: mnist_jax is faster). GFLOP/s at the steady median, counting "
      f"the FLOPs really done per example: 6*sum(in*out) over the Dense layers minus 2*in*out of "
      f"the first (no gradient for the images).",
      "",
      "| config | system | device | first epoch s | steady s/epoch min | steady s/epoch median "
      "| ours/peer | test acc | GFLOP/s | % of peak |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for name, entry in report["results"].items():
    ours = entry["systems"].get("mnist_jax", {}).get("steady_median")
    for system in report["args"]["systems"]:
      s = entry["systems"].get(system, {})
      if "status" in s:
        lines.append(f"| {name} | {system} | | {s['status']} | | | | | | |")
        continue
      ratio = "1.00x" if system == "mnist_jax" else (
          f"{ours / s['steady_median']:.2f}x" if ours and s.get("steady_median") else "n/a")
      accs = s["test_accuracy"]
      acc = (f"{accs[0]:.4f}" if len(accs) == 1 else
             f"{statistics.fmean(accs):.4f} ({min(accs):.4f}-{max(accs):.4f})")
      frac = s.get("fraction_of_peak")
      lines.append(
          f"| {name} | {system} | {s.get('device', '')} | {fmt(s['first_epoch_median'], '.2f')} "
          f"| {fmt(s['steady_min'])} | {fmt(s['steady_median'])} | {ratio} | {acc} "
          f"| {fmt(s.get('gflops'), '.1f')} | {fmt(None if frac is None else 100 * frac, '.0f')}% |")
  launch = report.get("launch")
  if launch:
    lines.append("")
    if "error" in launch:
      lines.append(f"Launch-to-result (`{launch['command']}`): failed: {launch['error']}")
    else:
      runs = len(launch["to_exit"]["seconds"])
      parts = []
      for key, what in (("to_printed_accuracy", "to the printed test accuracy"),
                        ("to_exit", "to exit")):
        t = launch.get(key)
        if t:
          parts.append(f"{what}: first run (empty JAX compilation cache) "
                       f"{t['first_cold_cache']:.2f} s, later runs (cache filled) min "
                       f"{fmt(t['warm_min'], '.2f')} s, median {fmt(t['warm_median'], '.2f')} s")
      lines.append(f"Launch-to-result, `{launch['command']}` (5 epochs, {runs} runs, from process "
                   f"start) " + "; ".join(parts) + ".")
  return "\n".join(lines) + "\n"


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
