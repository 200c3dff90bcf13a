"""mnist_jax: multilayer perceptrons on MNIST in JAX/Flax, reproducible to the bit.

data -> models -> train -> (report, predict); main.py is the command line.
"""
