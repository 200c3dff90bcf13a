"""T1 model B - "Hand-Written Digit Classification" (blog post), the dropout variant.

Flatten -> Dense(784, relu) -> Dropout(0.5) -> Dense(130, relu) -> Dropout(0.5) -> Dense(10, softmax);
keras.utils.normalize; Adam, categorical cross-entropy, 10 epochs, batch 50, validation_split=0.2.
Reported: 97.80% train / 97.83% test accuracy.

    python -m mnist_jax.main --config=adam_mlp_784_dropout
"""

from experiments.adam_mlp_784 import get_config as t1_model_a_config


def get_config():
  config = t1_model_a_config()
  config.model.hidden_sizes = (784, 130)
  config.model.dropout = (0.5, 0.5)
  return config
