"""Rasmus, Valpola, Honkala, Berglund, Raiko 2015, "Semi-Supervised Learning with Ladder Networks"
(NeurIPS), Table 1, the supervised baseline's row, "MLP + BatchNorm + Gaussian noise"
(permutation-invariant MNIST, all 60,000 labels): 0.80% (+- 0.03) test error.

The encoder of the Ladder network alone (`ladder.LadderMLP` with every denoising weight 0):
784-1000-500-250-250-250-10 ReLU, each layer standardised with its batch statistics, Gaussian noise
added to the input (std 0.3) and to every standardised pre-activation (std 0.5: the authors'
`--f-local-noise-std 0.5` for this row), the cross-entropy of the noisy pass minimised, the clean
pass tested. The set-up is the authors' code's (github.com/CuriousAI/ladder, run.py and its README's
"MNIST all labels" commands): Adam (learning rate 0.002, epsilon 1e-8 as in Blocks), batch 100,
150 epochs, the rate constant for 100 epochs and then linearly to 0 (as the code ran in 2015: since
its commit f1f0c99 of July 2016 the decay no longer reaches Adam's rate); BatchNorm epsilon 1e-10;
weights randn / sqrt(fan_in).
Where ours differs (running averages, one batch per step): mnist_jax/ladder.py's docstring.
Three seeds in one vmapped program; the test set is used once, at the end.

    python -m mnist_jax.main --config=ladder_baseline

Result: experiments/RESULTS.md (ladder_baseline).
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.num_seeds = 3

  config.model.name = "ladder"
  config.model.hidden_sizes = (1000, 500, 250, 250, 250)
  config.model.denoising_weights = (0.0,) * 7  # z_0 (input) ... z_6 (logits): no decoder
  config.model.noise_std = (0.3,) + (0.5,) * 6
  config.model.batchnorm_epsilon = 1e-10

  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.eps = 1e-8
  config.optimizer.schedule = "linear_tail"
  config.optimizer.decay_epochs = 50.0

  config.train.epochs = 150
  config.train.batch_size = 100
  config.train.eval_batch_size = 10_000
  config.train.checkpoint_every = 10
  return config
