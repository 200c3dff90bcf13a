"""Rasmus, Valpola, Honkala, Berglund, Raiko 2015, "Semi-Supervised Learning with Ladder Networks"
(NeurIPS), Table 1, the full Ladder's row (permutation-invariant MNIST, all 60,000 labels): 0.57%
(+- 0.02) test error; Pezeshki et al. 2016 (ICML, "Deconstructing the Ladder Network
Architecture") reach 0.57% too, with another combinator (their Table 2, row AMLP[2,2]:
`ladder_amlp_2_2`).

ladder_baseline's encoder (noise std 0.3 in every layer here) plus the denoising decoder: lateral
connections, the "vanilla" combinator (a1..a10 per unit; "gauss" in the authors' code), and a
denoising cost at every layer weighted 1000, 1, 0.01, 0.01, 0.01, 0.01, 0.01 from the input up to
the logits (the authors' README, "MNIST all labels": --denoising-cost-x 1000,1,0.01,...). Training
as ladder_baseline: Adam 0.002, batch 100, 150 epochs, the last 50 decayed linearly to 0. A step
makes two encoder passes and a decoder pass.

    python -m mnist_jax.main --config=ladder                  # 3 seeds vmapped
    # or one seed at a time (K = 0, 1, 2, 3, 4), then their table:
    python -m mnist_jax.main --config=ladder --config.num_seeds=1 --config.seed=K --workdir=runs/ladder-seedK
    python -m mnist_jax.aggregate runs/ladder-seed0 runs/ladder-seed1 runs/ladder-seed2 \
        runs/ladder-seed3 runs/ladder-seed4

Result: experiments/RESULTS.md (ladder).
"""

from mnist_jax import config as config_lib


def get_config():
  config = config_lib.load("ladder_baseline")
  config.model.noise_std = (0.3,)
  config.model.denoising_weights = (1000.0, 1.0, 0.01, 0.01, 0.01, 0.01, 0.01)
  config.model.combinator = "vanilla"
  return config
