"""Rasmus, Valpola, Honkala, Berglund, Raiko 2015, "Semi-Supervised Learning with Ladder Networks"
(NeurIPS), Table 1, the full Ladder's row, all 60,000 labels: 0.57% (+- 0.02) test error, as the
authors' code (github.com/CuriousAI/ladder) measures it.

`ladder` with BatchNorm's test-time statistics recomputed after training: a noise-free pass over
the 60,000 training images with the final parameters, each batch's mean and unbiased variance
averaged (run.py's FinalTestMonitoring over the training stream; `train.population_batch_stats`),
saved in the tested checkpoint so test, report and predict use them. The rest is already theirs
in `ladder`: the denoising costs on the classified batch (their second stream, with all labels,
yields the same batches), Adam 0.002, batch 100, 150 epochs with the last 50 decayed linearly to 0
(their 2015 code).

    # one seed at a time (K = 0, 1, 2, 3, 4), then their table:
    python -m mnist_jax.main --config=ladder_authors --config.num_seeds=1 --config.seed=K \
        --workdir=runs/ladder_authors-seedK
    python -m mnist_jax.aggregate runs/ladder_authors-seed0 runs/ladder_authors-seed1 \
        runs/ladder_authors-seed2 runs/ladder_authors-seed3 runs/ladder_authors-seed4

Result: experiments/RESULTS.md (ladder_amlp and ladder_authors).
"""

from mnist_jax import config as config_lib


def get_config():
  config = config_lib.load("ladder")
  config.train.batchnorm_statistics = "recomputed"
  return config
