"""What a multi-host job's stop agreement adds to an epoch: `multihost.any_process`, timed.

    python -m experiments.benchmarks.multihost_cost            # 2 processes on localhost, 200 calls

Every epoch of a job of several processes ends with one agreement on whether any process was asked
to stop (an all-gather of one flag), so that they all save the same epoch and exit together. This
starts the processes on localhost (CPU, gloo collectives), times `--calls` agreements in each, and
prints the median, min and max of process 0's, to set beside an epoch's seconds.
"""

import json
import socket
import statistics
import subprocess
import sys
import time

from absl import flags

from experiments.benchmarks.workers import MARKER, REPO_ROOT, emit, flag_args, quiet_env
from mnist_jax import cli, errors

PROGRAM = "experiments.benchmarks.multihost_cost"

flags.DEFINE_integer("processes", 2, "Processes of the job.")
flags.DEFINE_integer("calls", 200, "Agreements timed in each process.")
flags.DEFINE_string("worker", None, "(internal) run one process of the job.")
flags.DEFINE_integer("process_id", 0, "(internal) the worker's index.")
flags.DEFINE_integer("port", 0, "(internal) the coordinator's port.")


def worker(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel

  from mnist_jax import multihost  # pylint: disable=import-outside-toplevel
  multihost.initialize(f"localhost:{args.port}", args.processes, args.process_id, 60, 30, "")
  multihost.any_process(False)  # compiles the all-gather
  seconds = []
  for _ in range(args.calls):
    started = time.perf_counter()
    multihost.any_process(False)
    seconds.append(time.perf_counter() - started)
  emit({"process": jax.process_index(), "seconds": seconds})


def main(argv: list[str]) -> int:
  del argv
  args = flag_args()
  if args.worker:
    worker(args)
    return 0
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  workers = [subprocess.Popen(
      [sys.executable, "-m", PROGRAM, "--worker=agree", f"--process_id={k}", f"--port={port}",
       f"--processes={args.processes}", f"--calls={args.calls}"],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=quiet_env())
      for k in range(args.processes)]
  outputs = [w.communicate(timeout=600) for w in workers]
  lines = [line for out, _ in outputs[:1] for line in out.splitlines() if line.startswith(MARKER)]
  if any(w.returncode for w in workers) or not lines:
    raise errors.Error(f"A worker failed:\n{outputs[0][1][-2000:]}")
  seconds = json.loads(lines[0][len(MARKER):])["seconds"]
  print(f"`python -m {PROGRAM} --processes={args.processes} --calls={args.calls}`: one stop "
        f"agreement of {args.processes} processes on localhost took a median "
        f"{statistics.median(seconds) * 1e3:.2f} ms (min {min(seconds) * 1e3:.2f}, max "
        f"{max(seconds) * 1e3:.2f}) over {args.calls} calls.")
  return 0


if __name__ == "__main__":
  cli.start(main)
