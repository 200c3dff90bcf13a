"""The lowest-error Ladder network here: `ladder_amlp` with Adam's learning rate 0.003 instead of
the papers' 0.002. For comparison, the best published result under the same rules
(permutation-invariant MNIST, all 60,000 labels, dense layers, no augmentation): Pezeshki, Fan,
Brakel, Courville, Bengio 2016, "Deconstructing the Ladder Network Architecture" (ICML;
arXiv:1511.06430), Table 2, row AMLP[2,2], 0.569% (+- 0.010) test error (read second-hand, see
`ladder_amlp_2_2`; the abstract's 0.57%).

The rest is `ladder_amlp`'s: Rasmus et al.'s full Ladder (1000-500-250-250-250, noise std 0.3,
denoising weights 1000, 1, 0.01, ...), each combinator a per-unit MLP of (z~, u, z~ u) with 4
hidden units (AMLP[4], not the 2-2 of the row compared with), batch 100, 150 epochs with the rate
constant for 100 and then linearly to 0, BatchNorm statistics recomputed over the training set
after training.

How the rate was chosen, as it happened: it was the last of seven changes tried one at a time on
`ladder_amlp` on validation (seed 0, trained on the first 50,000 training images, validated on the
last 10,000), and it was tried after `ladder_amlp`'s five test seeds had been seen. The reference
moved during the search (seed 0 gave 0.62% on one machine, 0.68% on another, and the changes were
judged against the second). It won by 7 validation images of 10,000, on one seed, where one seed
resolves about 0.1 point. So the test figure is not that of a choice made blind; RESULTS.md
(best_ladder) has every seed, and the platforms on which it holds.

    # one seed at a time (K = 0 to 9: the paper's row is over 10 runs), the source pinned
    # (it sets each seed's batch order), then their table:
    python -m mnist_jax.main --config=best_ladder --config.num_seeds=1 --config.seed=K \
        --config.data.source=tfds --workdir=runs/best_ladder-seedK
    python -m mnist_jax.aggregate runs/best_ladder-seed?

Result, and the validation runs that chose the rate: experiments/RESULTS.md (best_ladder).
"""

from mnist_jax import config as config_lib


def get_config():
  config = config_lib.load("ladder_amlp")
  config.optimizer.learning_rate = 3e-3
  return config
