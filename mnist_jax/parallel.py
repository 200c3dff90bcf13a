"""Devices: the mesh, data and state placement across devices and hosts, and back to the host.

One 1-D mesh with axis "data": each batch is split along it, parameters and optimizer state are
replicated, and XLA inserts the gradient all-reduce (no pmap). A single device is a mesh of one.
The whole dataset is replicated on every device, so each device gathers its own rows of every batch
inside the compiled epoch and no host input pipeline feeds the devices.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import data
from mnist_jax.errors import ConfigError


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh with axis "data" over the first `num_devices` devices (0 = all of them).

  Across hosts `jax.devices()` lists every process's devices, so the same call spans a pod.
  """
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"config.mesh.num_devices={num_devices}, but only {len(devices)} "
                        f"devices are visible ({devices[0].platform}).")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def put_replicated(tree, mesh: jax.sharding.Mesh):
  """A copy of every array on every device of the mesh, across hosts too (each process holds
  the same values: the same data files, the same seed)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def put(x):
    x = np.asarray(x)
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)  # int64 -> int32, as jnp
    return jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])

  return jax.tree.map(put, tree)


def shard_batch(batch: dict, mesh: Optional[jax.sharding.Mesh]) -> dict:
  """Inside a compiled epoch: split the batch axis over the mesh (a no-op on one device)."""
  if mesh is None or mesh.size == 1:
    return batch
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return jax.lax.with_sharding_constraint(batch, sharding)


def to_host(tree, copy: bool = False):
  """numpy versions of (replicated) arrays, also of arrays that span the devices of several hosts:
  this host's copy. `copy=True` never returns a view of a device buffer (which a donated state
  may reuse)."""
  as_numpy = np.array if copy else np.asarray
  return jax.tree.map(lambda x: as_numpy(x.addressable_data(0) if isinstance(x, jax.Array) else x),
                      tree)


def is_primary() -> bool:
  """Process 0 writes the run's files; orbax coordinates checkpoint writes across processes."""
  return jax.process_index() == 0


@dataclasses.dataclass
class DeviceData:
  """A split on the device(s), preprocessed once."""
  images: jax.Array
  labels: jax.Array

  @classmethod
  def put(cls, split: data.Split, preprocess: str,
          mesh: Optional[jax.sharding.Mesh] = None) -> "DeviceData":
    """Preprocess and place the split; with a mesh, replicated on every device of it."""
    images, labels = (split.images, split.labels) if mesh is None else put_replicated(
        (split.images, split.labels), mesh)
    return cls(*_preprocess_split(images, labels, preprocess))

  def __len__(self):
    return self.labels.shape[0]


@functools.partial(jax.jit, static_argnames=("kind",))
def _preprocess_split(images, labels, kind: str):
  return data.preprocess(images, kind), jnp.asarray(labels, jnp.int32)
