"""T4 - "Deep Neural Networks for MNIST Classification" (course notebook).

Reshape(784) -> BatchNormalization -> Dense(200, sigmoid) -> Dense(100, sigmoid) -> Dense(60, sigmoid)
-> Dense(30, sigmoid) -> Dense(10, softmax); raw uint8 pixels (the BatchNorm normalises them);
SGD lr 0.03, categorical cross-entropy, 50 epochs, batch 32, the test set as validation data, seed 42.
The notebook reports no final figure.

    python -m mnist_jax.main --config=sgd_bn_mlp

Result: experiments/RESULTS.md (The five tutorials).
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.seed = 42
  config.data.preprocess = "raw"
  config.data.validation = "test"
  config.model.input_batchnorm = True
  config.model.hidden_sizes = (200, 100, 60, 30)
  config.model.activation = "sigmoid"
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.03
  config.train.epochs = 50
  config.train.batch_size = 32
  config.train.checkpoint_every = 5
  return config
