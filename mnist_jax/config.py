"""Experiment configs: the defaults every experiment starts from, lookup by name, and validation.

An experiment is a Python file in `experiments/` whose `get_config()` returns a `ConfigDict`
(the Flax-examples / big_vision convention). It starts from `default_config()` (or from another
experiment, via `load`) and changes only what its tutorial or paper changes, so the file reads as
the diff from a plain Keras setup.

The choices of a field (optimizers, activations, ...) are not listed here: each lives in one
registry beside the code that implements it (`optim.OPTIMIZERS`, `models.ACTIVATIONS`, ...), and
`validate` reads them, so adding a choice is one edit in one file.
"""

import functools
import importlib.util
import pathlib
import traceback

import ml_collections

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = REPO_ROOT / "experiments"


class ConfigError(ValueError):
  """A config that cannot be run; the message says what is wrong and how to fix it."""


def default_config() -> ml_collections.ConfigDict:
  """Keras defaults (see ../shared/seeds.md): what a tutorial gets when it does not say.

  Long by design: every field, with what it means, in one place.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0  # one integer seeds init, shuffling and dropout
  # Random bit generator of those keys (train.RNG_IMPLS): threefry (jax's default: the same bits on
  # every platform, and a vmapped replica equals the single run of its seed), or rbg / unsafe_rbg
  # (XLA's RngBitGenerator: cheaper dropout masks; bits may differ across platforms and JAX
  # versions, and vmapped replicas all draw from the first replica's key).
  config.rng_impl = "threefry"
  # Precision of float32 matrix products (loop.MATMUL_PRECISIONS). "highest": full float32 on
  # every backend, so GPU and TPU runs compute what the CPU and Keras compute; "default": the
  # backend's fast path (TF32 on recent NVIDIA GPUs, bfloat16 passes on TPU). The CPU ignores it.
  config.matmul_precision = "highest"
  # Replicas trained together in one vmapped program: seeds seed, seed+1, ..., x the sweep grid.
  config.num_seeds = 1
  config.sweep = ml_collections.ConfigDict()
  config.sweep.learning_rate = ()  # e.g. (1e-3, 3e-3, 1e-2); () = config.optimizer.learning_rate

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"  # a tfds image-classification dataset name
  config.data.source = "auto"  # data.SOURCES; auto = tfds if installed, else idx
  config.data.idx_dir = ""  # IDX files; "" = the repo's data/<name>
  config.data.tfds_dir = ""  # tfds data_dir; "" = the repo's data/tfds
  config.data.preprocess = "scale"  # data.PREPROCESSORS; scale = /255
  config.data.validation = "none"  # data.VALIDATION_SCHEMES, e.g. train_tail (Keras's validation_split)
  config.data.validation_fraction = 0.2  # for train_tail
  config.data.validation_seed = 1  # for test_halves (sklearn random_state)
  config.data.train_subset = 0  # >0: use only the first N training examples (quick runs, tests)

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"  # models.MODELS
  config.model.hidden_sizes = (100,)
  config.model.activation = "relu"  # models.ACTIVATIONS
  # activation="maxout" (Goodfellow et al. 2013): each hidden unit is the max of this many outputs
  # of its Dense layer (which has maxout_pieces x width of them).
  config.model.maxout_pieces = 5
  config.model.dropout = ()  # a rate after each hidden layer, e.g. (0.5, 0.5); () = none
  config.model.input_dropout = 0.0
  config.model.input_batchnorm = False  # BatchNorm on the flattened input (T4)
  config.model.hidden_batchnorm = False  # BatchNorm after each hidden Dense, before activation
  config.model.logits_batchnorm = False  # BatchNorm on the logits too (Miyato et al.'s VAT net)
  config.model.gaussian_noise = 0.0  # std of N(0, s^2) added to input and hidden pre-activations
  config.model.batchnorm_momentum = 0.99
  config.model.batchnorm_epsilon = 1e-3
  config.model.kernel_init = "glorot_uniform"  # models.KERNEL_INITS; Keras's Dense default
  # name="ladder" (ladder.LadderMLP, Rasmus et al. 2015) only: the corrupted pass's noise std (one
  # value, or one per layer from the input z_0 to the logits z_L), the denoising cost weights
  # lambda_0..lambda_L (all 0: the supervised half alone), the decoder's combinator function.
  config.model.noise_std = (0.3,)
  config.model.denoising_weights = ()
  config.model.combinator = "vanilla"  # ladder.COMBINATORS
  config.model.num_classes = 10

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"  # optim.OPTIMIZERS
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9  # adam, adamw
  config.optimizer.b2 = 0.999  # adam, adamw
  config.optimizer.eps = 1e-7  # Keras's epsilon (optax defaults to 1e-8)
  config.optimizer.rho = 0.9  # rmsprop decay
  config.optimizer.momentum = 0.0  # sgd, rmsprop
  # sgd: >0 ramps the momentum linearly from `momentum` to `momentum_final` over this many epochs,
  # then keeps it (pylearn2's MomentumAdjustor, Goodfellow et al.'s maxout runs). 0 = constant.
  config.optimizer.momentum_ramp_epochs = 0.0
  config.optimizer.momentum_final = 0.0
  config.optimizer.nesterov = False  # sgd
  config.optimizer.weight_decay = 0.0  # adamw (decoupled)
  config.optimizer.schedule = "constant"  # optim.SCHEDULES
  config.optimizer.warmup_epochs = 0.0  # warmup_cosine: epochs of linear warmup from 0
  config.optimizer.decay_epochs = 0.0  # linear_tail: the last epochs, decayed linearly to 0
  config.optimizer.decay_rate = 0.9  # exponential: the rate is multiplied by this every epoch
  config.optimizer.grad_clip_norm = 0.0  # >0: clip the global gradient norm
  # >0: after each step, rescale every hidden unit's incoming weight vector (kernel column) to at
  # most this L2 norm (max-norm, Srivastava et al. 2014: typically 2-4 with dropout).
  config.optimizer.max_norm = 0.0
  config.optimizer.max_norm_logits = False  # max-norm on the logits' kernel columns too

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0  # devices on the "data" axis (batch sharded); 0 = all visible

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 5
  config.train.batch_size = 32  # Keras fit's default
  config.train.eval_batch_size = 2000
  config.train.label_smoothing = 0.0
  # Virtual adversarial training (Miyato et al. 2016): adds vat_weight * KL(p(x) || p(x + r)), r of
  # L2 norm vat_epsilon per example found by vat_iterations power iterations with step vat_xi.
  config.train.vat_epsilon = 0.0  # 0 = off
  config.train.vat_xi = 1e-6
  config.train.vat_iterations = 1
  config.train.vat_weight = 1.0
  # Adversarial training (Goodfellow et al. 2015, fast gradient sign): the loss becomes
  # alpha J(x) + (1 - alpha) J(x + adversarial_epsilon sign(grad_x J(x))).
  # Also reported: accuracy on the validation and test images' attacks (val_adversarial_accuracy,
  # a monitor for early stopping, as Goodfellow et al. select; test_adversarial_accuracy).
  config.train.adversarial_epsilon = 0.0  # 0 = off
  config.train.adversarial_alpha = 0.5
  config.train.checkpoint_every = 1  # epochs between checkpoints
  config.train.keep_checkpoints = 2
  # With validation, the best epoch by `monitor` is also kept, in checkpoints_best/.
  config.train.monitor = "val_accuracy"  # loop.MONITORS (Keras's `monitor`)
  # Early stopping (Keras EarlyStopping): >0 stops after this many epochs without improvement
  # of `monitor`; needs validation. 0 = off.
  config.train.early_stopping_patience = 0
  config.train.restore_best = True  # with early stopping: test (and return) the best epoch
  # >0: keep an exponential moving average of the weights (decay per step, e.g. 0.999; warmed up
  # as min(decay, (1 + step) / (10 + step))) and evaluate, test, checkpoint-test and predict
  # with it instead of the raw weights. 0 = off.
  config.train.ema_decay = 0.0
  return config


def available() -> list[str]:
  """Names accepted by `--config=NAME`: the experiment files in experiments/."""
  return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve(name_or_path: str) -> pathlib.Path:
  """`adam_mlp` -> experiments/adam_mlp.py; a path to a .py file is taken as it is."""
  path = pathlib.Path(name_or_path)
  if path.suffix == ".py" or "/" in name_or_path:
    if path.is_file():
      return path
    raise ConfigError(f"Config file {name_or_path!r} does not exist. "
                      f"Give a path to a .py file with get_config(), or one of: "
                      f"{', '.join(available())}.")
  candidate = EXPERIMENTS_DIR / f"{name_or_path}.py"
  if candidate.is_file():
    return candidate
  raise ConfigError(f"Unknown config {name_or_path!r}. Available configs: "
                    f"{', '.join(available())}. A path to a .py file with get_config() works too.")


def load(name_or_path: str) -> ml_collections.ConfigDict:
  """The config of an experiment, by name or path, validated.

  Experiments that extend another one call this too (`load("adam_mlp_784")`), so a config file is
  always loaded by its path, never imported as a package module.
  """
  config = load_file(resolve(name_or_path))
  validate(config)
  return config


def load_file(path: pathlib.Path) -> ml_collections.ConfigDict:
  """Run a config file's `get_config()`; any failure becomes one ConfigError paragraph naming the
  file, the line and the Python error (a file can fail to parse, to import, or in get_config)."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"mnist_jax_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"Config file {path} has no get_config() function. Define one that "
                        f"returns a ConfigDict, e.g. starting from "
                        f"mnist_jax.config.default_config().")
    config = module.get_config()
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError(f"Config file {path} does not parse: {e.msg} at line {e.lineno}. Fix the "
                      f"file (or pick another --config).") from None
  except Exception as e:  # pylint: disable=broad-except  # the file's own code failed
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__)
             if pathlib.Path(frame.filename) == path]
    where = f" at line {lines[-1]}" if lines else ""
    raise ConfigError(f"Config file {path} failed{where}: {type(e).__name__}: {e}. Fix the file "
                      f"(or pick another --config).") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() in {path} returned a {type(config).__name__}, not an "
                      f"ml_collections.ConfigDict. Start from mnist_jax.config.default_config() "
                      f"and change its fields.")
  missing = sorted(set(flatten(default_config().to_dict())) - set(flatten(config.to_dict())))
  if missing:
    raise ConfigError(f"The config of {path} lacks the field(s) {', '.join(missing)}. Start from "
                      f"mnist_jax.config.default_config(), which has every field the trainer "
                      f"reads.")
  return config


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}: a config's fields by their override names."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _choices() -> dict:
  """A field's path -> the registry its value must be a key of."""
  # Imported here: they import jax, and data.py imports this module.
  from mnist_jax import data, ladder, loop, models, optim, train  # pylint: disable=import-outside-toplevel
  return {
      ("data", "source"): data.SOURCES,
      ("data", "preprocess"): data.PREPROCESSORS,
      ("data", "validation"): data.VALIDATION_SCHEMES,
      ("model", "name"): models.MODELS,
      ("model", "activation"): models.ACTIVATIONS,
      ("model", "kernel_init"): models.KERNEL_INITS,
      ("model", "combinator"): ladder.COMBINATORS,
      ("optimizer", "name"): optim.OPTIMIZERS,
      ("optimizer", "schedule"): optim.SCHEDULES,
      ("train", "monitor"): loop.MONITORS,
      ("rng_impl",): train.RNG_IMPLS,
      ("matmul_precision",): loop.MATMUL_PRECISIONS,
  }


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise ConfigError for values that would crash deep inside JAX or train silently wrong.

  Every rule in one list, so a user sees all the problems of a config at once.
  """
  problems = []
  for path, choices in _choices().items():
    value = functools.reduce(lambda node, key: node[key], path, config)
    if value not in choices:
      problems.append(f"config.{'.'.join(path)}={value!r} is not one of {', '.join(choices)}.")

  def require(ok, message):
    if not ok:
      problems.append(message)

  train, model, opt, data = config.train, config.model, config.optimizer, config.data
  require(train.epochs >= 1, f"config.train.epochs={train.epochs} must be at least 1.")
  require(train.batch_size >= 1, f"config.train.batch_size={train.batch_size} must be positive.")
  require(train.eval_batch_size >= 1,
          f"config.train.eval_batch_size={train.eval_batch_size} must be positive.")
  require(opt.learning_rate > 0,
          f"config.optimizer.learning_rate={opt.learning_rate} must be positive.")
  require(0 <= opt.warmup_epochs < train.epochs or opt.schedule != "warmup_cosine",
          f"config.optimizer.warmup_epochs={opt.warmup_epochs} must be in [0, epochs).")
  require(0 <= train.label_smoothing < 1,
          f"config.train.label_smoothing={train.label_smoothing} must be in [0, 1).")
  require(train.checkpoint_every >= 1,
          f"config.train.checkpoint_every={train.checkpoint_every} must be at least 1.")
  require(train.keep_checkpoints >= 1,
          f"config.train.keep_checkpoints={train.keep_checkpoints} must be at least 1.")
  require(train.early_stopping_patience >= 0,
          f"config.train.early_stopping_patience={train.early_stopping_patience} must be >= 0 "
          f"(0 = off).")
  require(train.early_stopping_patience == 0 or data.validation != "none",
          f"config.train.early_stopping_patience={train.early_stopping_patience} needs "
          f"validation data: set config.data.validation (e.g. train_tail), or set the patience "
          f"to 0 to turn early stopping off.")
  require(model.num_classes >= 2,
          f"config.model.num_classes={model.num_classes} must be at least 2 (MNIST: 10).")
  require(all(int(h) >= 1 for h in model.hidden_sizes),
          f"config.model.hidden_sizes={tuple(model.hidden_sizes)} must be positive integers.")
  rates = tuple(model.dropout) + (model.input_dropout,)
  require(all(0 <= r < 1 for r in rates),
          f"dropout rates {rates} must each be in [0, 1): a rate of 1 drops everything.")
  require(model.gaussian_noise >= 0,
          f"config.model.gaussian_noise={model.gaussian_noise} must be >= 0 (0 = off).")
  require(len(model.dropout) in (0, len(model.hidden_sizes)),
          f"config.model.dropout={tuple(model.dropout)} needs one rate per hidden layer "
          f"({len(model.hidden_sizes)}), or () for none.")
  require(0 < data.validation_fraction < 1,
          f"config.data.validation_fraction={data.validation_fraction} must be in (0, 1).")
  require(config.mesh.num_devices >= 0,
          f"config.mesh.num_devices={config.mesh.num_devices} must be >= 0 (0 = all devices).")
  require(config.num_seeds >= 1, f"config.num_seeds={config.num_seeds} must be at least 1.")
  require(all(lr > 0 for lr in config.sweep.learning_rate),
          f"config.sweep.learning_rate={tuple(config.sweep.learning_rate)} must all be positive.")
  require(not config.sweep.learning_rate or opt.schedule == "constant",
          "config.sweep.learning_rate needs config.optimizer.schedule='constant' (a schedule "
          "recomputes the learning rate every step).")
  require(opt.max_norm >= 0, f"config.optimizer.max_norm={opt.max_norm} must be >= 0 (0 = off).")
  require(opt.momentum_ramp_epochs >= 0 and (not opt.momentum_ramp_epochs or (
      opt.name == "sgd" and 0 <= opt.momentum_final < 1)),
          f"config.optimizer.momentum_ramp_epochs={opt.momentum_ramp_epochs} must be >= 0 (0 = "
          f"off) and, when on, needs optimizer.name='sgd' (not {opt.name!r}) and "
          f"momentum_final={opt.momentum_final} in [0, 1).")
  require(model.maxout_pieces >= 1,
          f"config.model.maxout_pieces={model.maxout_pieces} must be at least 1.")
  require(0 <= train.ema_decay < 1,
          f"config.train.ema_decay={train.ema_decay} must be in [0, 1) (0 = off; e.g. 0.999).")
  if model.name == "ladder":
    layers = len(model.hidden_sizes) + 2  # z_0 (the input) ... z_L (the logits)
    noise = tuple(model.noise_std)
    require(len(model.denoising_weights) == layers and all(w >= 0 for w in model.denoising_weights),
            f"config.model.denoising_weights={tuple(model.denoising_weights)} needs {layers} "
            f"values >= 0 for the ladder model, one per layer from the input to the logits "
            f"(all 0: the supervised half alone).")
    require(len(noise) in (1, layers) and all(n >= 0 for n in noise),
            f"config.model.noise_std={model.noise_std} needs one value >= 0, or {layers}.")
    require(model.activation != "maxout",
            "The ladder model's decoder needs elementwise activations: "
            "config.model.activation='maxout' belongs to the mlp model.")
    require(not (model.dropout or model.input_dropout or model.input_batchnorm
                 or model.hidden_batchnorm or model.gaussian_noise),
            "The ladder model has its own BatchNorm and noise (config.model.noise_std): "
            "config.model.dropout, input_dropout, input_batchnorm, hidden_batchnorm and "
            "gaussian_noise belong to the mlp model; leave them at their defaults.")
  require(0 < opt.decay_rate <= 1, f"config.optimizer.decay_rate={opt.decay_rate} must be in (0, 1].")
  require(opt.schedule != "linear_tail" or 0 < opt.decay_epochs <= train.epochs,
          f"config.optimizer.decay_epochs={opt.decay_epochs} must be in (0, epochs] for the "
          f"linear_tail schedule.")
  require(train.vat_epsilon >= 0 and train.vat_xi > 0 and train.vat_iterations >= 1
          and train.vat_weight >= 0,
          f"config.train.vat_epsilon={train.vat_epsilon} (>= 0), vat_xi={train.vat_xi} (> 0), "
          f"vat_iterations={train.vat_iterations} (>= 1) and vat_weight={train.vat_weight} "
          f"(>= 0) are out of range.")
  require(train.monitor != "val_adversarial_accuracy" or train.adversarial_epsilon > 0,
          "config.train.monitor='val_adversarial_accuracy' measures the attack of adversarial "
          "training: set config.train.adversarial_epsilon > 0 (e.g. 0.25), or monitor "
          "val_accuracy.")
  require(train.adversarial_epsilon >= 0 and 0 <= train.adversarial_alpha <= 1,
          f"config.train.adversarial_epsilon={train.adversarial_epsilon} must be >= 0 and "
          f"adversarial_alpha={train.adversarial_alpha} in [0, 1].")
  require(data.train_subset >= 0,
          f"config.data.train_subset={data.train_subset} must be >= 0 (0 = all).")
  if problems:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
