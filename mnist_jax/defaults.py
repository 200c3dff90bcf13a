"""The defaults every experiment starts from: Keras's, field by field, each with what it means.

A leaf below validation and loading: `validation` compares a config with these, `config.load`
runs an experiment's `get_config()`, which starts from them.
"""

import ml_collections

from mnist_jax import hyperparams


def default_config() -> ml_collections.ConfigDict:
  """Keras defaults: what a tutorial gets when it does not say (each tutorial's config in
  experiments/ sets what its tutorial does).

  Long by design: every field, with what it means, in one place.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0  # one integer seeds init, shuffling and dropout
  # Random bit generator of those keys (train.RNG_IMPLS): threefry (jax's default: the same bits on
  # every platform, and a vmapped replica draws the keys of the single run of its seed), or rbg / unsafe_rbg
  # (XLA's RngBitGenerator: cheaper dropout masks; bits may differ across platforms and JAX
  # versions, and vmapped replicas all draw from the first replica's key).
  config.rng_impl = "threefry"
  # Precision of float32 matrix products (train.MATMUL_PRECISIONS). "highest": full float32 on
  # every backend, so GPU and TPU runs compute what the CPU and Keras compute; "default": the
  # backend's fast path (TF32 on recent NVIDIA GPUs, bfloat16 passes on TPU). The CPU ignores it.
  config.matmul_precision = "highest"
  # Replicas trained together in one vmapped program: seeds seed, seed+1, ..., x the sweep grid.
  config.num_seeds = 1
  # The sweep grid: values of any field in hyperparams.SWEEPABLE, e.g.
  # config.sweep.optimizer.learning_rate = (1e-3, 1e-2); the grid is the product of the swept
  # fields. () = the field's own value.
  sweep = {}
  for name in hyperparams.SWEEPABLE:
    group, field = name.split(".")
    sweep.setdefault(group, {})[field] = ()
  config.sweep = ml_collections.ConfigDict(sweep)

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"  # a tfds image-classification dataset name
  config.data.source = "auto"  # data.SOURCES; auto = tfds if installed, else idx
  config.data.idx_dir = ""  # IDX files; "" = the repo's data/<name>
  config.data.tfds_dir = ""  # tfds data_dir; "" = the repo's data/tfds
  config.data.preprocess = "scale"  # data.PREPROCESSORS; scale = /255
  config.data.validation = "none"  # data.VALIDATION_SCHEMES, e.g. train_tail (Keras's validation_split)
  config.data.validation_fraction = 0.2  # for train_tail
  config.data.validation_seed = 1  # for test_halves (sklearn random_state)
  # False: a run that chooses (a hyperparameter, a sweep's point, an option) on train_tail
  # validation and never sees the test set; its summary, report and aggregate give the validation
  # metrics instead (measured as the test would be). The chosen config's final runs test, once each.
  config.data.use_test = True
  config.data.train_subset = 0  # >0: use only the first N training examples (quick runs, tests)

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"  # models.MODELS
  config.model.hidden_sizes = (100,)
  config.model.activation = "relu"  # layers.ACTIVATIONS
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
  config.model.kernel_init = "glorot_uniform"  # layers.KERNEL_INITS; Keras's Dense default
  # name="ladder" (ladder.LadderMLP, Rasmus et al. 2015) only: the corrupted pass's noise std (one
  # value, or one per layer from the input z_0 to the logits z_L), the denoising cost weights
  # lambda_0..lambda_L (all 0: the supervised half alone), the decoder's combinator function.
  config.model.noise_std = (0.3,)
  config.model.denoising_weights = ()
  # "vanilla": Rasmus et al.'s g (ladder.VanillaCombinator); "amlp": Pezeshki et al.'s per-unit
  # MLP of (z~, u, z~ u) (ladder.AugmentedMLPCombinator). ladder.COMBINATORS lists them.
  config.model.combinator = "vanilla"
  # combinator="amlp" only: the widths of each unit's hidden layers, (4,) for Pezeshki et al.'s
  # AMLP[4], (2, 2) for AMLP[2,2].
  config.model.combinator_hidden = (4,)
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
  # The power iteration's finite-difference step: the authors' 1e-6 is float32 rounding at pixel
  # scale (adversarial.virtual_adversarial_perturbation); 0 = the exact Hessian-vector product.
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
  # True: a due checkpoint is skipped while the previous one is still being written, so training
  # never waits for the disk, and while the previous one began less than
  # min_seconds_between_checkpoints ago, so the saves' own CPU time (tens of ms each) stays a
  # small share of short epochs'. Which epochs have one then depends on the disk's and the
  # device's speed; what training computes does not. The last epoch's, a stop's and the best
  # epoch's are always saved. False: every checkpoint_every-th epoch is saved, waiting for the
  # previous save when need be.
  config.train.skip_checkpoints_while_saving = True
  config.train.min_seconds_between_checkpoints = 60.0  # a kill loses at most this and an epoch
  config.train.keep_checkpoints = 2
  # With validation, the best epoch by `monitor` is also kept, in checkpoints_best/.
  config.train.monitor = "val_accuracy"  # early_stopping.MONITORS (Keras's `monitor`)
  # Early stopping (Keras EarlyStopping): >0 stops after this many epochs without improvement
  # of `monitor`; needs validation. 0 = off.
  config.train.early_stopping_patience = 0
  config.train.restore_best = True  # with early stopping: test (and return) the best epoch
  # >0: keep an exponential moving average of the weights (decay per step, e.g. 0.999; warmed up
  # as min(decay, (1 + step) / (10 + step))) and evaluate, test, checkpoint-test and predict
  # with it instead of the raw weights. 0 = off.
  config.train.ema_decay = 0.0
  # BatchNorm's test-time statistics (train.BATCHNORM_STATISTICS): "running", the exponential
  # averages kept while training (Keras, flax); "recomputed", after training a pass over the
  # training set with the final parameters and no noise, averaging each batch's mean and unbiased
  # variance (Rasmus et al.'s and Miyato et al.'s reported errors). Saved in the tested epoch's
  # checkpoint, so the test, the report and predict all use them.
  config.train.batchnorm_statistics = "running"
  return config
