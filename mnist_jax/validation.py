"""Config validation: every rule a config must satisfy before anything is loaded or trained.

Above the registries it reads (each choice list lives beside its code: `data.SOURCES`,
`optim.OPTIMIZERS`, ...), so none of them imports this module back.
"""

import functools

import ml_collections

from mnist_jax import data, early_stopping, ladder, layers, models, optim, train
from mnist_jax.defaults import default_config
from mnist_jax.errors import ConfigError


def _choices() -> dict:
  """A field's path -> the registry its value must be a key of."""
  return {
      ("data", "source"): data.SOURCES,
      ("data", "preprocess"): data.PREPROCESSORS,
      ("data", "validation"): data.VALIDATION_SCHEMES,
      ("model", "name"): models.MODELS,
      ("model", "activation"): layers.ACTIVATIONS,
      ("model", "kernel_init"): layers.KERNEL_INITS,
      ("model", "combinator"): ladder.COMBINATORS,
      ("optimizer", "name"): optim.OPTIMIZERS,
      ("optimizer", "schedule"): optim.SCHEDULES,
      ("train", "monitor"): early_stopping.MONITORS,
      ("rng_impl",): train.RNG_IMPLS,
      ("matmul_precision",): train.MATMUL_PRECISIONS,
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
  if model.name in models.MODELS:
    # A field the chosen model does not have would be ignored without a word.
    fields = set(models.MODELS[model.name].__dataclass_fields__) | {"name"}
    defaults = default_config().model
    unused = sorted(k for k in model if k not in fields and _differs(model[k], defaults.get(k)))
    require(not unused,
            f"config.model.{', config.model.'.join(unused)}: not fields of the {model.name!r} "
            f"model, which would ignore them. Leave them at their defaults, or choose a model "
            f"that has them (config.model.name: {', '.join(models.MODELS)}).")
  if model.name == "ladder":
    num_layers = len(model.hidden_sizes) + 2  # z_0 (the input) ... z_L (the logits)
    noise = tuple(model.noise_std)
    require(len(model.denoising_weights) == num_layers
            and all(w >= 0 for w in model.denoising_weights),
            f"config.model.denoising_weights={tuple(model.denoising_weights)} needs {num_layers} "
            f"values >= 0 for the ladder model, one per layer from the input to the logits "
            f"(all 0: the supervised half alone).")
    require(len(noise) in (1, num_layers) and all(n >= 0 for n in noise),
            f"config.model.noise_std={model.noise_std} needs one value >= 0, or {num_layers}.")
  require(model.activation != "maxout" or model.name == "mlp",
          f"config.model.activation='maxout' belongs to the mlp model (the {model.name!r} model "
          f"needs elementwise activations).")
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


def _differs(value, default) -> bool:
  normalize = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  return normalize(value) != normalize(default)
