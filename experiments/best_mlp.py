"""Beyond the tutorials (issue 7): the most accurate plain MLP here, 5 seeds in one command.

(result: see experiments/RESULTS.md, "Beyond the tutorials: best_mlp")

    python -m mnist_jax.main --config=best_mlp
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.num_seeds = 5  # seeds 0..4, trained together in one vmapped program
  config.rng_impl = "rbg"  # dropout masks from XLA's RngBitGenerator: ~1.8x faster steps on CPU

  config.data.validation = "none"  # the recipe was chosen on the last 10,000; now all 60,000

  config.model.hidden_sizes = (1024, 1024)
  config.model.input_dropout = 0.2
  config.model.dropout = (0.3, 0.3)

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_epochs = 1.0

  config.train.epochs = 40
  config.train.batch_size = 256
  config.train.eval_batch_size = 10_000
  config.train.label_smoothing = 0.1
  config.train.ema_decay = 0.999
  config.train.checkpoint_every = 5  # 5 replicas' weights, moments and average: ~150 MB a save
  return config
