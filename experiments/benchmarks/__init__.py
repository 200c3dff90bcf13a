"""Programs that measure mnist_jax (speed, scaling, devices); run from the repository root:

    python -m experiments.benchmarks.benchmark     # mnist_jax against Keras, PyTorch, plain JAX
    python -m experiments.benchmarks.scaling       # vmapped seeds, sharded devices

Each measurement runs in a fresh subprocess of its program (`--worker=...`), which reports back
through `workers.py`'s protocol.
"""
