"""T3 - "Lesson 31 - The MNIST Dataset" (course notebook).

Flatten -> Dense(512, sigmoid) -> Dense(256, sigmoid) -> Dense(10, softmax); pixels / 255; the
10,000 test images split 50/50 into validation and test (train_test_split, random_state=1);
Adam lr 0.001, sparse categorical cross-entropy, batch 1024, 50 epochs, seed 1.
Reported: test loss 0.1025, test accuracy 0.9734 (on its 5,000-image test half); final val acc 0.981.

    python -m mnist_jax.main --config=sigmoid_mlp

Result: experiments/RESULTS.md (The five tutorials).
"""

from mnist_jax.config import default_config


def get_config():
  config = default_config()
  config.seed = 1
  config.data.validation = "test_halves"
  config.data.validation_seed = 1
  config.model.hidden_sizes = (512, 256)
  config.model.activation = "sigmoid"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.train.epochs = 50
  config.train.batch_size = 1024
  config.train.checkpoint_every = 5
  return config
