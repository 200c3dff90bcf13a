"""The benchmark's PyTorch workers (experiments/benchmarks/torch_workers.py), as far as a CPU
checks them: the CUDA-graph variant's step on static tensors, run eagerly, trains exactly as the
eager worker's step, and without CUDA the variant reports itself skipped."""

import types

import pytest

torch = pytest.importorskip("torch")  # requirements-bench.txt: the benchmark's peers only

from experiments.benchmarks import torch_workers  # noqa: E402
from mnist_jax import config as config_lib  # noqa: E402

BATCH, STEPS = 64, 4


def _train(config, static: bool):
  """Per-step losses and final parameters of STEPS steps on random data."""
  cpu = torch.device("cpu")
  data = torch.Generator().manual_seed(1)
  x = torch.randn((BATCH * STEPS + 10, 784), generator=data)
  y = torch.randint(0, 10, (x.shape[0],), generator=data)
  order = torch.randperm(x.shape[0], generator=data)
  torch.manual_seed(0)
  model, optimizer, loss_fn = torch_workers.build(config, 784, cpu)
  model.train()
  step = (torch_workers.StaticStep(model, loss_fn, optimizer, BATCH, 784, cpu, graph=False)
          if static else None)
  losses = []
  for i in range(STEPS):
    idx = order[i * BATCH:(i + 1) * BATCH]
    if static:
      loss, _, labels = step(x, y, idx)
      assert torch.equal(labels, y[idx])
    else:
      loss, _ = torch_workers.train_step(model, loss_fn, optimizer, x[idx], y[idx])
    losses.append(float(loss.detach()))
  return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name,overrides", [
    ("adam_mlp", {}), ("rmsprop_mlp", {}), ("adam_mlp_784_dropout", {}),
    ("sgd_bn_mlp", {"model.hidden_batchnorm": False, "optimizer.momentum": 0.9,
                    "optimizer.nesterov": True})])
def test_the_static_step_trains_exactly_as_the_eager_step(name, overrides):
  """Its warm-up steps (which allocate the optimizer's state before a capture) are undone: the
  same losses and parameters, bit for bit, dropout's random draws included."""
  config = config_lib.load(name)
  for field, value in overrides.items():
    group, key = field.split(".")
    config[group][key] = value
  eager_losses, eager_params = _train(config, static=False)
  static_losses, static_params = _train(config, static=True)
  assert static_losses == eager_losses
  assert all(torch.equal(a, b) for a, b in zip(static_params, eager_params))
  assert eager_losses[-1] < eager_losses[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_the_cudagraph_worker_reports_itself_skipped_without_cuda(capsys):
  torch_workers.worker_torch_cudagraph(types.SimpleNamespace())
  assert capsys.readouterr().out == 'BENCHMARK_JSON {"skipped": "no CUDA device"}\n'
