"""T2 - "MNIST with 2 dense layers" (study notes).

Dense(512, relu, input 784) -> Dense(10, softmax); images reshaped to (N, 784), / 255; RMSprop
(Keras defaults: lr 1e-3, rho 0.9, eps 1e-7), categorical cross-entropy, 5 epochs, batch 128, no
validation. Reported: test accuracy 0.9785; first epoch loss 0.2524 / accuracy 0.9273.

    python -m mnist_jax.main --config=rmsprop_mlp

Result: experiments/RESULTS.md (The five tutorials).
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.model.hidden_sizes = (512,)
  config.model.activation = "relu"
  config.optimizer.name = "rmsprop"
  config.optimizer.rho = 0.9
  config.train.epochs = 5
  config.train.batch_size = 128
  return config
