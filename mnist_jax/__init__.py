"""mnist_jax: multilayer perceptrons on MNIST in JAX/Flax, reproducible to the bit.

config -> data -> models -> optim -> train -> (parallel, replicas) -> loop -> workdir -> report;
main.py is the command line. docs/architecture.md lists what each module does.
"""
