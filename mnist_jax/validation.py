"""Config validation: every rule a config must satisfy before anything is loaded or trained.

Above the registries it reads (each choice list lives beside its code: `data.SOURCES`,
`optim.OPTIMIZERS`, ...), so none of them imports this module back.
"""

import functools

import ml_collections

from mnist_jax import data, early_stopping, hyperparams, ladder, layers, models, optim, train
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
      ("train", "batchnorm_statistics"): train.BATCHNORM_STATISTICS,
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
  require(0 <= opt.warmup_epochs < train.epochs or opt.schedule != "warmup_cosine",
          f"config.optimizer.warmup_epochs={opt.warmup_epochs} must be in [0, epochs).")
  require(train.checkpoint_every >= 1,
          f"config.train.checkpoint_every={train.checkpoint_every} must be at least 1.")
  require(train.keep_checkpoints >= 1,
          f"config.train.keep_checkpoints={train.keep_checkpoints} must be at least 1.")
  require(train.min_seconds_between_checkpoints >= 0,
          f"config.train.min_seconds_between_checkpoints={train.min_seconds_between_checkpoints} "
          f"must be >= 0 (0 = save whenever the previous save is written).")
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
  require(len(model.dropout) in (0, len(model.hidden_sizes)),
          f"config.model.dropout={tuple(model.dropout)} needs one rate per hidden layer "
          f"({len(model.hidden_sizes)}), or () for none.")
  require(data.use_test or data.validation == "train_tail",
          f"config.data.use_test=False keeps the test set out of the run, but "
          f"config.data.validation={data.validation!r} "
          + ("leaves nothing to measure the run on" if data.validation == "none" else
             "validates on test images") +
          ". Set config.data.validation=train_tail, which holds out the last "
          "config.data.validation_fraction of the training images.")
  require(0 < data.validation_fraction < 1,
          f"config.data.validation_fraction={data.validation_fraction} must be in (0, 1).")
  require(config.mesh.num_devices >= 0,
          f"config.mesh.num_devices={config.mesh.num_devices} must be >= 0 (0 = all devices).")
  require(config.num_seeds >= 1, f"config.num_seeds={config.num_seeds} must be at least 1.")
  require(opt.momentum_ramp_epochs >= 0 and (not opt.momentum_ramp_epochs or (
      opt.name == "sgd" and 0 <= opt.momentum_final < 1)),
          f"config.optimizer.momentum_ramp_epochs={opt.momentum_ramp_epochs} must be >= 0 (0 = "
          f"off) and, when on, needs optimizer.name='sgd' (not {opt.name!r}) and "
          f"momentum_final={opt.momentum_final} in [0, 1).")
  require(model.maxout_pieces >= 1,
          f"config.model.maxout_pieces={model.maxout_pieces} must be at least 1.")
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
    hidden, default_hidden = (tuple(model.combinator_hidden),
                              tuple(default_config().model.combinator_hidden))
    if model.combinator == "amlp":
      require(hidden and all(isinstance(w, int) and w >= 1 for w in hidden),
              f"config.model.combinator_hidden={hidden} needs one positive width per hidden "
              f"layer of each unit's AMLP combinator: (4,) for AMLP[4], (2, 2) for AMLP[2,2].")
    elif model.combinator in ladder.COMBINATORS:
      require(hidden == default_hidden,
              f"config.model.combinator_hidden={hidden} shapes the AMLP combinator, but "
              f"config.model.combinator={model.combinator!r}, which would ignore it. Set "
              f"config.model.combinator='amlp', or leave combinator_hidden at {default_hidden}.")
  require(model.activation != "maxout" or model.name == "mlp",
          f"config.model.activation='maxout' belongs to the mlp model (the {model.name!r} model "
          f"needs elementwise activations).")
  require(0 < opt.decay_rate <= 1, f"config.optimizer.decay_rate={opt.decay_rate} must be in (0, 1].")
  require(opt.schedule != "linear_tail" or 0 < opt.decay_epochs <= train.epochs,
          f"config.optimizer.decay_epochs={opt.decay_epochs} must be in (0, epochs] for the "
          f"linear_tail schedule.")
  require(train.vat_xi >= 0 and train.vat_iterations >= 1,
          f"config.train.vat_xi={train.vat_xi} (>= 0; 0 = the exact Hessian-vector product) and "
          f"vat_iterations={train.vat_iterations} (>= 1) are out of range.")
  require(train.monitor != "val_adversarial_accuracy" or train.adversarial_epsilon > 0,
          "config.train.monitor='val_adversarial_accuracy' measures the attack of adversarial "
          "training: set config.train.adversarial_epsilon > 0 (e.g. 0.25), or monitor "
          "val_accuracy.")
  require(data.train_subset >= 0,
          f"config.data.train_subset={data.train_subset} must be >= 0 (0 = all).")
  problems += _range_problems(config)
  if not problems:
    problems += _sweep_problems(config)
  if problems:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))


def _range_problems(config) -> list[str]:
  """Every sweepable field's values, the config's own and the sweep's, within its range."""
  problems = []
  flat, swept = hyperparams.flatten(config.to_dict()), hyperparams.swept(config)
  for name, valid in hyperparams.SWEEPABLE.items():
    value = flat[name]
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not all(v in valid for v in values):
      problems.append(f"config.{name}={value!r} must {'each ' * (values != (value,))}be in "
                      f"{valid}.")
    bad = [v for v in swept.get(name, ()) if v not in valid]
    if bad:
      problems.append(f"config.sweep.{name}: {', '.join(map(repr, bad))} must be in {valid}.")
  return problems


def _read_fields(config) -> set:
  """The sweepable fields this config reads: swept, each gives replicas that differ."""
  model, train = config.model, config.train
  swept = hyperparams.swept(config)
  optimizer_fields = [f for f in hyperparams.in_group(swept, "optimizer")
                      if f"optimizer.{f}" in hyperparams.SWEEPABLE]
  reads = {f"optimizer.{f}" for f in optim.sweepable_fields(config.optimizer, optimizer_fields,
                                                            train.epochs)} if optimizer_fields else set()
  if model.name != "nnx_mlp":  # its NNX module is built from Python numbers
    reads |= {f"model.{f}" for f in models.MODELS[model.name].__dataclass_fields__}
  reads |= {name for name in hyperparams.SWEEPABLE if name.startswith("train.")}
  for weight, switch in (("vat_weight", "vat_epsilon"), ("adversarial_alpha", "adversarial_epsilon")):
    if not (train[switch] or f"train.{switch}" in swept):
      reads.discard(f"train.{weight}")
  return reads


def _sweep_problems(config) -> list[str]:
  """Each swept field must be sweepable and read by this config; asked only of a config whose
  other fields are valid (the optimizer is built to see which fields it reads)."""
  problems, reads = [], _read_fields(config)
  model, opt, train = config.model, config.optimizer, config.train
  for name in hyperparams.swept(config):
    if name == "learning_rate":
      problems.append("config.sweep.learning_rate is now config.sweep.optimizer.learning_rate.")
    elif name not in hyperparams.SWEEPABLE:
      problems.append(f"config.sweep.{name} is not a sweep field (those are "
                      f"{', '.join(hyperparams.SWEEPABLE)}).")
    elif name not in reads:
      why = {"model": f"model {model.name!r}" + (
                 ", whose NNX module is built from Python numbers" if model.name == "nnx_mlp"
                 else ""),
             "optimizer": f"optimizer {opt.name!r}",
             "train": f"vat_epsilon={train.vat_epsilon}" if name == "train.vat_weight"
                      else f"adversarial_epsilon={train.adversarial_epsilon}"}[name.split(".")[0]]
      problems.append(f"config.sweep.{name}: this config does not read {name} ({why}), so its "
                      f"replicas would differ in name only. Sweep a field it reads.")
  if "optimizer.momentum" in hyperparams.swept(config) and opt.momentum_ramp_epochs:
    problems.append("config.sweep.optimizer.momentum cannot be swept with "
                    "config.optimizer.momentum_ramp_epochs (a schedule from momentum to "
                    "momentum_final): set momentum_ramp_epochs=0, or run one process per value.")
  return problems


def _differs(value, default) -> bool:
  normalize = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  return normalize(value) != normalize(default)
