"""Beyond the tutorials (issue 7): the most accurate plain MLP here, 5 seeds in one command.

Dense only and permutation-invariant (the 784 pixels as a vector; no convolutions, no augmentation):
784-1024-1024-10 ReLU (1.86M parameters) with dropout 0.2 on the input and 0.3 after each hidden
layer; AdamW 2e-3 (weight decay 1e-4), one warmup epoch then cosine decay to 0, batch 256, 40
epochs; label smoothing 0.1; an exponential moving average of the weights (decay 0.999), which is
what is tested. Dropout rates, width, depth and length were chosen on the last 10,000 training
images (validation='train_tail', fraction 1/6), never on the test set; this final run then trains
on all 60,000 (more data, nothing left to choose), five seeds vmapped in one program.

    python -m mnist_jax.main --config=best_mlp

Measured on the 2-core Intel Xeon CPU (JAX 0.10.2), from runs/best_mlp/summary.json: test accuracy
0.9861, 0.9861, 0.9869, 0.9859, 0.9847 (seeds 0-4), mean 0.98594 +- 0.00071 (std), i.e. 1.41%
error; 1,425 s of training for all five, 24 min 1 s launch to exit. Short of the issue's 98.9%
target: see experiments/RESULTS.md for the comparison with Srivastava et al. 2014 and why.
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
