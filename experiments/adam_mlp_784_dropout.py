"""T1 model B - "Hand-Written Digit Classification" (blog post), the dropout variant.

Flatten -> Dense(784, relu) -> Dropout(0.5) -> Dense(130, relu) -> Dropout(0.5) -> Dense(10, softmax);
keras.utils.normalize; Adam, categorical cross-entropy, 10 epochs, batch 50, validation_split=0.2.
Reported: 97.80% train / 97.83% test accuracy.

    python -m mnist_jax.main --config=adam_mlp_784_dropout

Result: experiments/RESULTS.md (The five tutorials).
"""

from mnist_jax import config as config_lib


def get_config():
  config = config_lib.load("adam_mlp_784")  # T1 model A, which this variant extends
  config.model.hidden_sizes = (784, 130)
  config.model.dropout = (0.5, 0.5)
  return config
