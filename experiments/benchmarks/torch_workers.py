"""PyTorch's workers: the benchmark's model in eager mode (`torch`), and with each training step
captured in one CUDA graph and replayed per batch (`torch_cudagraph`, CUDA only).

Both put the data on the device once (CUDA when present), draw each epoch's order with
`torch.randperm` there and gather the batches there (no DataLoader). A graph replays the step's
kernels with one launch: on a GPU, launching a small MLP's kernels one by one from Python can cost
more than running them.
"""

import time

from experiments.benchmarks.systems import load_config
from experiments.benchmarks.workers import emit

WARMUP_STEPS = 3  # eager steps before the capture, as the PyTorch docs' recipe runs


def build(cfg, input_dim: int, device, capturable: bool = False) -> tuple:
  """(model, optimizer, loss_fn): nn.Sequential with Keras's Dense initialisation, torch.optim
  with Keras's hyperparameters. `capturable` keeps Adam's and RMSprop's step count on the device,
  as a CUDA graph needs (SGD needs nothing)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  m = cfg.model
  activation = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
                "elu": nn.ELU, "swish": nn.SiLU}[m.activation]
  modules, width_in = [], input_dim
  rates = tuple(m.dropout) or (0.0,) * len(m.hidden_sizes)
  for width, rate in zip(m.hidden_sizes, rates):
    modules += [nn.Linear(width_in, int(width)), activation()]
    if rate:
      modules.append(nn.Dropout(rate))
    width_in = int(width)
  modules.append(nn.Linear(width_in, int(m.num_classes)))
  model = nn.Sequential(*modules).to(device)
  for module in model:
    if isinstance(module, nn.Linear):  # Keras's Dense defaults
      nn.init.xavier_uniform_(module.weight)
      nn.init.zeros_(module.bias)
  o = cfg.optimizer
  if o.name == "adam":
    optimizer = torch.optim.Adam(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                 eps=o.eps, capturable=capturable)
  elif o.name == "rmsprop":
    optimizer = torch.optim.RMSprop(model.parameters(), lr=o.learning_rate, alpha=o.rho,
                                    eps=o.eps, momentum=o.momentum, capturable=capturable)
  else:
    optimizer = torch.optim.SGD(model.parameters(), lr=o.learning_rate, momentum=o.momentum,
                                nesterov=o.nesterov)
  return model, optimizer, nn.CrossEntropyLoss()


def train_step(model, loss_fn, optimizer, x, y) -> tuple:
  """One training step: forward, loss, backward, optimizer step; returns (loss, logits)."""
  logits = model(x)
  loss = loss_fn(logits, y)
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
  return loss, logits


class StaticStep:
  """`train_step` on fixed input tensors that each batch is gathered into, the form a CUDA graph
  needs (a replay reads and writes the addresses of the capture).

  With `graph`, WARMUP_STEPS eager steps run on a side stream (they allocate the optimizer's state
  and the autograd buffers, which a capture must not), then one step is captured in a
  torch.cuda.CUDAGraph, replayed per batch. Without it, on any device, the same step runs
  eagerly: what a CPU test compares with the eager worker. The warm-up's updates, and the random
  numbers it drew, are undone, so training starts from the model's initial state either way.
  """

  def __init__(self, model, loss_fn, optimizer, batch_size: int, input_dim: int, device,
               graph: bool):
    import torch  # pylint: disable=import-outside-toplevel
    self.x = torch.zeros((batch_size, input_dim), device=device)
    self.y = torch.zeros((batch_size,), dtype=torch.long, device=device)
    self._step = lambda: train_step(model, loss_fn, optimizer, self.x, self.y)
    initial = [p.detach().clone() for p in model.parameters()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
      if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
          self._warm_up()
        torch.cuda.current_stream().wait_stream(side)
      else:
        self._warm_up()
    with torch.no_grad():  # back to the initial state: a fresh optimizer's state is all zeros
      for p, p0 in zip(model.parameters(), initial):
        p.copy_(p0)
      for state in optimizer.state.values():
        for value in state.values():
          if torch.is_tensor(value):
            value.zero_()
    self.graph = None
    if graph:
      self.graph = torch.cuda.CUDAGraph()
      with torch.cuda.graph(self.graph):
        self.loss, self.logits = self._step()

  def _warm_up(self) -> None:
    for _ in range(WARMUP_STEPS):
      self._step()

  def __call__(self, x_all, y_all, idx) -> tuple:
    """Train on the examples `idx` of (x_all, y_all): (loss, logits, labels), valid until the
    next call overwrites them."""
    import torch  # pylint: disable=import-outside-toplevel
    torch.index_select(x_all, 0, idx, out=self.x)
    torch.index_select(y_all, 0, idx, out=self.y)
    if self.graph is None:
      return (*self._step(), self.y)
    self.graph.replay()
    return self.loss, self.logits, self.y


def worker_torch(args) -> None:
  _train(args, graph=False)


def worker_torch_cudagraph(args) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  if not torch.cuda.is_available():
    emit({"skipped": "no CUDA device"})
    return
  _train(args, graph=True)


def _train(args, graph: bool) -> None:
  """Eager: every batch, the tail that does not fill one included. Graphed: full batches only
  (one captured shape), like jax_scan; its GFLOP/s count only the examples trained on."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  cfg = load_config(args.config)
  arrays = np.load(args.arrays)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  x_train = torch.from_numpy(arrays["x_train"]).to(device)
  y_train = torch.from_numpy(arrays["y_train"]).long().to(device)
  x_test = torch.from_numpy(arrays["x_test"]).to(device)
  y_test = torch.from_numpy(arrays["y_test"]).long().to(device)
  torch.manual_seed(args.seed)
  model, optimizer, loss_fn = build(cfg, x_train.shape[1], device, capturable=graph)
  n, batch_size = x_train.shape[0], cfg.train.batch_size
  trained = n // batch_size * batch_size if graph else n

  def eager_step(x_all, y_all, idx):
    xb, yb = x_all[idx], y_all[idx]
    return (*train_step(model, loss_fn, optimizer, xb, yb), yb)

  step = None if graph else eager_step
  seconds = []
  for _ in range(args.epochs):
    started = time.perf_counter()
    model.train()
    if step is None:  # warm-up and capture count in the first epoch, as compilation does
      step = StaticStep(model, loss_fn, optimizer, batch_size, x_train.shape[1], device, graph)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    perm = torch.randperm(n, device=device)
    for i in range(0, trained, batch_size):
      idx = perm[i:i + batch_size]
      loss, logits, labels = step(x_train, y_train, idx)
      total_loss += loss.detach() * len(idx)
      correct += (logits.detach().argmax(1) == labels).sum()
    train_loss, train_correct = float(total_loss), int(correct)  # waits for the last step
    seconds.append(time.perf_counter() - started)
  model.eval()
  with torch.no_grad():
    test_correct = sum(int((model(x_test[i:i + 2000]).argmax(1) == y_test[i:i + 2000]).sum())
                       for i in range(0, x_test.shape[0], 2000))
  record = {"epoch_seconds": seconds, "train_loss": train_loss / trained,
            "train_accuracy": train_correct / trained,
            "test_accuracy": test_correct / x_test.shape[0],
            "device": str(device) + (f":{torch.cuda.get_device_name()}"
                                     if device.type == "cuda" else ""),
            "threads": torch.get_num_threads()}
  if graph:
    record["examples_per_epoch_fraction"] = trained / n
  emit(record)
