"""Pezeshki, Fan, Brakel, Courville, Bengio 2016, "Deconstructing the Ladder Network Architecture"
(ICML; arXiv:1511.06430), Table 2, row AMLP[4], permutation-invariant MNIST with all 60,000 labels:
0.598% (+- 0.014) test error, read second-hand (see `ladder_amlp_2_2`). The abstract's 0.57% is
the AMLP[2,2] row's 0.569%.

`ladder_authors` (the full Ladder as Rasmus et al.'s code runs and measures it: denoising weights
1000, 1, 0.01, ...; Adam 0.002, batch 100, 150 epochs, the last 50 decayed linearly to 0; BatchNorm
statistics recomputed over the training set after training) with each decoder layer's combinator
a per-unit MLP of (z~, u, z~ u): 4 leaky-ReLU hidden units, one output
(`mnist_jax.ladder.AugmentedMLPCombinator`, whose docstring says where its shape was read). The
combinator is the row's; the denoising weights are Rasmus et al.'s, not the 2000 on the input and
0 elsewhere that `ladder_amlp_2_2` takes from a secondary source for the AMLP[2,2] row.

    # one seed at a time (K = 0 to 9: the paper's row is over 10 runs), the source pinned
    # (it sets each seed's batch order), then their table:
    python -m mnist_jax.main --config=ladder_amlp --config.num_seeds=1 --config.seed=K \
        --config.data.source=tfds --workdir=runs/ladder_amlp-seedK
    python -m mnist_jax.aggregate runs/ladder_amlp-seed?

Result: experiments/RESULTS.md (ladder_amlp).
"""

from mnist_jax import config as config_lib


def get_config():
  config = config_lib.load("ladder_authors")
  config.model.combinator = "amlp"
  return config
