"""Pezeshki, Fan, Brakel, Courville, Bengio 2016, "Deconstructing the Ladder Network Architecture"
(ICML; arXiv:1511.06430), Table 2, row AMLP[2,2], permutation-invariant MNIST with all 60,000
labels: 0.569% (+- 0.010) test error, the mean of 10 runs; the abstract's 0.57%.

`ladder_amlp` with each unit's combinator a 3-2-2-1 MLP of (z~, u, z~ u) (leaky ReLU 0.1 on the
two hidden layers, a linear output; weights N(0, 0.025^2), biases 0) and the denoising cost on the
input alone, weighted 2000: the decoder still runs from the top, but the costs of z_1 ... z_L
weigh 0. The rest is `ladder_amlp`'s: noise std 0.3 on the input and every layer, Adam 0.002,
batch 100, 150 epochs with the last 50 decayed linearly to 0, BatchNorm statistics recomputed over
the training set after training.

Second-hand: the paper's abstract (0.57%) is the only part read in the paper itself. The row, its
figure and the 10 runs come from the transcription of Table 2 in github.com/sakishinoda/tf-ssl's
README; the widths 2-2, the weights 2000 and 0, the noise, the 0.025 and the schedule from
github.com/cybertronai/sutro-problems (mnist/experiments/pmnist-transfer-20260923/research/
model-protocol.md), which cites section 4.2.3, Eq. 24, Table 2 and the supplement's Tables 4-5.
The authors' public code (github.com/mpezeshki/ladder_network, 2015) predates the AMLP and has none.

    # one seed at a time (K = 0 to 9: the paper's row is over 10 runs), the source pinned
    # (it sets each seed's batch order), then their table:
    python -m mnist_jax.main --config=ladder_amlp_2_2 --config.num_seeds=1 --config.seed=K \
        --config.data.source=tfds --workdir=runs/ladder_amlp_2_2-seedK
    python -m mnist_jax.aggregate runs/ladder_amlp_2_2-seed?

Result: experiments/RESULTS.md (ladder_amlp and ladder_authors).
"""

from mnist_jax import config as config_lib


def get_config():
  config = config_lib.load("ladder_amlp")
  config.model.combinator_hidden = (2, 2)
  config.model.denoising_weights = (2000.0,) + (0.0,) * 6  # z_0 (input) ... z_6 (logits)
  return config
