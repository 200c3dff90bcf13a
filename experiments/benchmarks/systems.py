"""The systems the benchmark compares, and the workers that train them: each worker runs in its own
process (`python -m experiments.benchmarks.benchmark --worker=NAME`, the protocol of workers.py)
and reports through `workers.emit`. PyTorch's workers are in torch_workers.py.
"""

import functools
import importlib.util
import math
import os
import pathlib
import time

from experiments.benchmarks.workers import emit, jax_device_name

SYSTEMS = ("mnist_jax", "jax_scan", "keras_tf", "keras_jax", "torch", "torch_cudagraph")
# Python modules each system needs; a missing one means "not installed", never an error.
REQUIRES = {
    "mnist_jax": ("jax", "flax", "optax"),
    "jax_scan": ("jax", "optax"),
    "keras_tf": ("keras", "tensorflow"),
    "keras_jax": ("keras", "jax"),
    "torch": ("torch",),
    "torch_cudagraph": ("torch",),
}


def installed(system: str) -> bool:
  return all(importlib.util.find_spec(module) is not None for module in REQUIRES[system])


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

