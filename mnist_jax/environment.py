"""Where a run ran: the versions, devices, CPU and commit, one record per process that trained it.

Two runs of one config and seed are bit-identical only on the same platform with the same
versions (docs/reliability.md); when two results disagree, these records are the first thing to
compare (`python -m mnist_jax.verify` prints their differences). The training loop appends one
line to <workdir>/environment.jsonl each time a process starts or resumes the run, so a run
resumed on another machine names both. JAX is imported only by `describe`: the benchmark's
workers for other systems read the CPU through this module without it.
"""

import datetime
import functools
import importlib.metadata
import os
import pathlib
import platform
import subprocess

from mnist_jax import paths

# The packages whose versions can change a run's numbers, by their distribution names.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def describe(data_source: str, from_epoch: int) -> dict:
  """This process's environment, as recorded in environment.jsonl."""
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return {
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "from_epoch": from_epoch,
      "commit": _commit(),
      "versions": {"python": platform.python_version(), **_versions()},
      "device": {"platform": device.platform, "kind": device.device_kind,
                 "count": jax.device_count(), "processes": jax.process_count()},
      "cpu": {"model": cpu_model(), "cores": cpu_cores()},
      "data_source": data_source,
  }


def _versions() -> dict:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


@functools.cache
def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_cores() -> int:
  """The cores this process may run on (its affinity, where the OS has one)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@functools.cache
def _commit() -> dict:
  """The repository's commit and whether tracked files differ from it; {} outside a checkout."""
  def git(*args) -> str:
    return subprocess.run(["git", "-C", str(paths.REPO_ROOT), *args], capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
  try:
    return {"sha": git("rev-parse", "HEAD"),
            "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}
  except (OSError, subprocess.SubprocessError):
    return {}


def summary_line(record: dict) -> str:
  """One line for a log or a table: "jax 0.10.2, 1 CPU (AMD EPYC, 2 cores), tfds, commit f79145f"."""
  device, versions, commit = record["device"], record["versions"], record.get("commit") or {}
  where = f"{device['count']} {device['kind'] if device['platform'] != 'cpu' else 'CPU'}"
  sha = commit.get("sha", "")[:7] + (" (modified)" if commit.get("modified") else "")
  return (f"jax {versions.get('jax')}, {where} ({record['cpu']['model']}, "
          f"{record['cpu']['cores']} cores), {record['data_source']} source"
          + (f", commit {sha}" if sha else ""))
