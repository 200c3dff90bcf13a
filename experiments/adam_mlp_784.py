"""T1 model A - "Hand-Written Digit Classification" (blog post).

Flatten -> Dense(784, relu) -> Dense(10, softmax); keras.utils.normalize (each image row to unit
L2 norm); Adam, categorical cross-entropy, 10 epochs, batch 50, validation_split=0.2 (the last
12,000 training images). Reported: 99.71% train / 97.56% test accuracy.

    python -m mnist_jax.main --config=adam_mlp_784

Result: experiments/RESULTS.md (The five tutorials).
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.data.preprocess = "l2_rows"
  config.data.validation = "train_tail"
  config.data.validation_fraction = 0.2
  config.model.hidden_sizes = (784,)
  config.model.activation = "relu"
  config.optimizer.name = "adam"
  config.train.epochs = 10
  config.train.batch_size = 50
  return config
