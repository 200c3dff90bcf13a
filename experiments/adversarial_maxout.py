"""Goodfellow, Shlens, Szegedy 2015, "Explaining and Harnessing Adversarial Examples" (ICLR),
Section 6 (in the text; the paper has no table for it): a maxout network with dropout, 1600 units
per layer, trained on permutation-invariant MNIST with the fast-gradient-sign adversarial objective
0.5 J(x) + 0.5 J(x + 0.25 sign(grad_x J)); five seeds gave 0.77% test error four times and 0.83%
once, mean 0.782%. (The same paper: 0.94% for the 240-unit maxout net, 0.84% with adversarial
training.)

The network and training are the original maxout net's (Goodfellow et al. 2013, the authors'
pylearn2/scripts/papers/maxout/mnist_pi.yaml, which the paper defers to) with 1600 units instead
of 240: two maxout layers of 5 pieces, max column norm 1.9365 on every layer (the softmax's too),
dropout 0.2 on the input and 0.5 on each hidden layer; SGD, batch 100, learning rate 0.1 divided
by 1.000004 every step (here 0.9976 per 600-step epoch, the same rate), momentum 0.5 rising
linearly to 0.7 over 250 epochs.

One choice differs, the initial weights: Glorot-uniform instead of the authors' U(-0.005, 0.005)
(`--config.model.kernel_init=uniform_0.005`), from which our adversarial training does not leave
the initial plateau (measured on training data only: experiments/RESULTS.md, adversarial_maxout).

The paper chose the number of epochs by early stopping on the adversarial validation error (the
clean one was flat), then retrained on all 60,000 images for that many epochs. Step 1, on the last
10,000 training images (the maxout configs' split; patience 100 as theirs):

    python -m mnist_jax.main --config=adversarial_maxout --config.num_seeds=1 \\
        --config.data.validation=train_tail --config.data.validation_fraction=0.1666667 \\
        --config.train.monitor=val_adversarial_accuracy \\
        --config.train.early_stopping_patience=100 --config.train.epochs=1000 \\
        --workdir=runs/adversarial_maxout-select

Step 2, the final run (5 seeds, as the paper), with step 1's best epoch for --config.train.epochs:

    python -m mnist_jax.main --config=adversarial_maxout --config.train.epochs=BEST

Without step 1 the config trains 250 epochs: where the original 240-unit net's first stage stopped
(mnist_pi_continued.yaml resumes it at learning rate 0.0615 = 0.1 / 1.000004^121,600 steps and
momentum 0.694, i.e. after epoch 243 of 500 steps). Where ours differs: pylearn2 drops input pixels
without rescaling the kept ones (input_scales 1), flax's Dropout rescales them by 1/0.8; the
adversarial images are made on the same dropout mask as the clean pass (mnist_jax/train.py).

Result (not run: about 15 h a seed on 2 CPU cores): experiments/RESULTS.md (adversarial_maxout).
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.num_seeds = 5

  config.model.hidden_sizes = (1600, 1600)
  config.model.activation = "maxout"
  config.model.maxout_pieces = 5
  config.model.input_dropout = 0.2
  config.model.dropout = (0.5, 0.5)
  config.model.kernel_init = "glorot_uniform"  # not the authors' uniform_0.005: see above

  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = "exponential"
  config.optimizer.decay_rate = 1.000004 ** -600  # per epoch of 600 steps
  config.optimizer.momentum = 0.5
  config.optimizer.momentum_final = 0.7
  config.optimizer.momentum_ramp_epochs = 250.0
  config.optimizer.max_norm = 1.9365
  config.optimizer.max_norm_logits = True

  config.train.adversarial_epsilon = 0.25
  config.train.adversarial_alpha = 0.5
  config.train.epochs = 250
  config.train.batch_size = 100
  config.train.eval_batch_size = 10_000
  config.train.checkpoint_every = 10
  return config
