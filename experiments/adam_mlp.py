"""T0 - "ANN with MNIST" (course notebook).

Flatten -> Dense(100, relu) -> Dense(10, softmax); pixels / 255; Adam (Keras defaults), sparse
categorical cross-entropy, 5 epochs, batch 32, no validation. The notebook reports no number; its
text remarks that test accuracy ends a little below training accuracy.

    python -m mnist_jax.main --config=adam_mlp

Result: experiments/RESULTS.md (The five tutorials).
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.model.hidden_sizes = (100,)
  config.model.activation = "relu"
  config.optimizer.name = "adam"
  config.train.epochs = 5
  config.train.batch_size = 32
  return config
