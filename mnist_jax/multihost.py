"""A job of several processes (hosts): started in agreement, stopped together, explained when one
is lost.

JAX's distributed runtime watches the job: a process that stops sending heartbeats for
`--heartbeat_timeout` seconds (killed, out of memory, its host gone), or a coordinator that
vanishes, makes it end every other process with a fatal log and a native stack trace
(`client.h`: "Terminating process because the JAX distributed service detected fatal errors").
`jax.distributed.initialize` offers no hook to intercept that (its client's error callback is
internal), nor to a coordinator port that is taken or a process that never arrives. So with
`--distributed`, `python -m mnist_jax.main` runs its process as a child and stays beside it
(`supervise`): it forwards SIGTERM and SIGINT, drops the native stack frames, and when JAX ends
the child it prints, last, one paragraph naming the cause, the last complete checkpoint and the
command to run on every host, and exits with LOST_PROCESS.

In the child: `initialize` joins the job with bounded waits, `agree_on_start` refuses processes
started differently (config, code, --num_processes, a workdir that is not one shared directory),
and `any_process` makes a stop requested on one process (SIGTERM, Ctrl-C) the whole job's, at
the same epoch.
"""

import collections
import ctypes
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional, Sequence

from mnist_jax import errors
from mnist_jax.cli import LOST_PROCESS, USAGE
from mnist_jax.errors import ConfigError

HEARTBEAT_TIMEOUT, INIT_TIMEOUT = 30, 120  # seconds: the defaults of the two flags
# Set in the child's environment: the file where it records what the supervisor reports.
_CHILD_FILE = "MNIST_JAX_SUPERVISOR_FILE"


# ---------------------------------------------------------------------------------------------
# The supervisor: the parent process of a --distributed run


def should_supervise(argv: Sequence[str]) -> bool:
  """Whether this process is a --distributed run's launcher (not yet its supervised child)."""
  distributed = any(a in ("--distributed", "--distributed=true", "--distributed=1") for a in argv)
  return distributed and _CHILD_FILE not in os.environ


def supervise(argv: Sequence[str]) -> int:
  """Run `python -m mnist_jax.main ARGV` as a child; its exit code, or LOST_PROCESS (USAGE for a
  start that failed) with one paragraph when JAX ended it."""
  with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="mnist_jax_job_") as record:
    child = subprocess.Popen(  # pylint: disable=subprocess-popen-preexec-fn
        [sys.executable, "-m", "mnist_jax.main", *argv[1:]], stderr=subprocess.PIPE, text=True,
        env={**os.environ, _CHILD_FILE: record.name}, preexec_fn=_die_with_parent,
        process_group=0)  # a terminal's Ctrl-C reaches the child once, through `forward`
    tail = collections.deque(maxlen=400)
    reader = threading.Thread(target=_pass_stderr, args=(child.stderr, tail), daemon=True)
    reader.start()

    def forward(signum, frame):
      del frame
      child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      code = child.wait()
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    reader.join(timeout=5)
    if code >= 0 and code != LOST_PROCESS:
      return code  # the child ended itself, and said why
    job = Job.read(record.name)
  message, code = explain(code, "".join(tail), job, argv)
  print(f"\nERROR: {message}", file=sys.stderr)
  return code


def _die_with_parent():
  """In the child, before exec: be killed with the supervisor (kill -9 included), as one process."""
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# Lines of a fatal native log that say nothing to a user: stack frames, and Python's fault dump.
_NOISE = re.compile(r"^\s+@\s+0x|^\*\*\* Check failure stack trace|^Fatal Python error|"
                    r"^(Current thread|Thread) 0x|^  File \"|^Extension modules:|^\s*$")


def _pass_stderr(stream, tail: collections.deque) -> None:
  for line in stream:
    tail.append(line)
    if not _NOISE.match(line):
      sys.stderr.write(line)
      sys.stderr.flush()


@dataclasses.dataclass(frozen=True)
class Job:
  """What a child records for its supervisor once its flags are parsed."""
  process_id: int = 0
  num_processes: int = 0
  coordinator: str = ""
  workdir: str = ""
  heartbeat_timeout: int = HEARTBEAT_TIMEOUT
  init_timeout: int = INIT_TIMEOUT
  started: bool = False  # joined the job (initialize returned)

  def write(self) -> None:
    path = os.environ.get(_CHILD_FILE)
    if path:
      pathlib.Path(path).write_text(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def read(cls, path: str) -> "Job":
    try:
      return cls(**json.loads(pathlib.Path(path).read_text()))
    except (OSError, ValueError, TypeError):
      return cls()  # the child ended before recording anything


def explain(code: int, stderr: str, job: Job, argv: Sequence[str]) -> tuple[str, int]:
  """(paragraph, exit code) for a child that JAX ended (`code` < 0: killed by that signal)."""
  me = f"process {job.process_id} of {job.num_processes}" if job.num_processes else "this process"
  command = "python -m mnist_jax.main " + " ".join(
      re.sub(r"^--process_id=\d+$", "--process_id=K", a) for a in argv[1:])
  if "Failed to add port to server" in stderr:
    return taken_port(job), USAGE
  never_met = ("RegisterTask" in stderr and "DEADLINE_EXCEEDED" in stderr) or (
      not job.started and ("DEADLINE_EXCEEDED" in stderr or "UNAVAILABLE" in stderr))
  if never_met:
    return (f"{me.capitalize()} waited {job.init_timeout} s for the job's {job.num_processes} "
            f"processes to meet at the coordinator {job.coordinator}, and not all came. Nothing "
            f"was trained. Start all {job.num_processes} processes (--process_id=0 to "
            f"{job.num_processes - 1}, --process_id=0 on the host {job.coordinator} names) with "
            f"the same --coordinator_address and --num_processes, within --init_timeout="
            f"{job.init_timeout} s of each other.", USAGE)
  if code == -signal.SIGKILL:
    cause = f"{me.capitalize()} was killed (SIGKILL: by a user, or out of memory)"
  elif lost := re.search(r"stopped sending heartbeats\):\s*([\d,\s]+)", stderr):
    ids = sorted({int(i) for i in re.findall(r"\d+", lost.group(1))})
    cause = (f"Process{'es' * (len(ids) > 1)} {', '.join(map(str, ids))} of "
             f"{job.num_processes} stopped responding (no heartbeat for {job.heartbeat_timeout} "
             f"s: killed, out of memory, or its host gone), and JAX stopped {me}")
  elif "Connection reset by peer" in stderr or "UNAVAILABLE" in stderr:
    cause = (f"The coordinator (process 0, {job.coordinator}) stopped responding, and JAX "
             f"stopped {me}")
  elif code == LOST_PROCESS:
    cause = (f"A collective operation between {me} and another process failed, and no process "
             f"was named lost within twice the heartbeat timeout")
  else:
    cause = f"JAX's distributed runtime stopped {me} (exit {code}; its log is above)"
  epochs = complete_epochs(pathlib.Path(job.workdir) / "checkpoints") if job.workdir else []
  resume = (f"the last complete checkpoint is of epoch {epochs[-1]}, in {job.workdir}/checkpoints"
            if epochs else "no checkpoint had been completed, so the job starts again from epoch 1")
  return (f"{cause}. The job cannot go on without it; {resume}. To resume, run the same command "
          f"again on every host, each with its own --process_id: {command}", LOST_PROCESS)


def taken_port(job: Job) -> str:
  """The paragraph for a coordinator that cannot listen on its port. JAX either raises it ("Failed
  to start RPC server") or ends the process from native code, depending on where gRPC fails."""
  host, _, port = job.coordinator.rpartition(":")
  other = f"{host or 'HOST'}:{int(port) + 1}" if port.isdigit() else "HOST:PORT"
  return (f"The coordinator's address {job.coordinator} cannot be used: its port is taken by "
          f"another program (an earlier job still running?). Nothing was trained. Start every "
          f"process with a free port in --coordinator_address, e.g. {other}.")


def complete_epochs(directory: pathlib.Path) -> list[int]:
  """The epochs of the finished checkpoints in `directory`: orbax names each one's directory by
  its epoch, and an unfinished save's by the epoch and a temporary suffix."""
  try:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  except OSError:
    return []


# ---------------------------------------------------------------------------------------------
# In the job's processes


def initialize(coordinator: Optional[str], num_processes: Optional[int],
               process_id: Optional[int], init_timeout: int, heartbeat_timeout: int,
               workdir: str) -> None:
  """Join the job (jax.distributed) with bounded waits, after recording it for the supervisor."""
  import jax  # pylint: disable=import-outside-toplevel
  job = Job(process_id or 0, num_processes or 0, coordinator or "", workdir, heartbeat_timeout,
            init_timeout)
  job.write()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; GPU/TPU ignore it
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=init_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
  except jax.errors.JaxRuntimeError as e:
    if "Failed to start RPC server" in str(e):
      raise ConfigError(taken_port(job)) from None
    raise
  dataclasses.replace(job, process_id=jax.process_index(), num_processes=jax.process_count(),
                      started=True).write()


def is_peer_failure(error: Exception) -> bool:
  """Whether `error` is a collective or a barrier with another process that failed: the sign of
  a lost process, which JAX's runtime names once its heartbeat timeout passes."""
  import jax  # pylint: disable=import-outside-toplevel
  text = str(error)
  return jax.process_count() > 1 and (
      isinstance(error, errors.LostProcess) or (isinstance(error, jax.errors.JaxRuntimeError) and (
          "Gloo" in text or "Connection reset" in text or "UNAVAILABLE" in text
          or "DEADLINE_EXCEEDED" in text)))


def await_verdict(error: Exception, heartbeat_timeout: int) -> None:
  """After `is_peer_failure(error)`: leave the naming of the lost process to JAX's runtime,
  which ends this process once the heartbeat timeout has passed (and the supervisor explains);
  after twice that, end it here, with LOST_PROCESS."""
  wait = 2 * heartbeat_timeout + 5
  first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
  print(f"\nAnother process of the job stopped answering ({first}); waiting up to {wait} s for "
        f"the job's coordination service to name it.", file=sys.stderr, flush=True)
  time.sleep(wait)
  os._exit(LOST_PROCESS)  # pylint: disable=protected-access  # JAX's shutdown would wait on peers


def code_version() -> str:
  """A digest of the package's source: processes running different code disagree on it."""
  digest = hashlib.sha256()
  for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
    digest.update(path.name.encode() + path.read_bytes())
  return digest.hexdigest()[:12]


_RECORD_BYTES = 1 << 16  # a process's start record, padded: the config as JSON and a little more


def _allgather_json(value) -> list:
  """`value` of every process, in process order (a device collective of padded bytes)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  data = json.dumps(value).encode()
  if len(data) > _RECORD_BYTES:
    raise ConfigError(f"The config is too large to compare across processes ({len(data):,} "
                      f"bytes as JSON; at most {_RECORD_BYTES:,}).")
  padded = np.zeros(_RECORD_BYTES, np.uint8)
  padded[:len(data)] = np.frombuffer(data, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(row).rstrip(b"\0")) for row in gathered.reshape(-1, _RECORD_BYTES)]


def agree_on_start(config_json: str, num_processes_flag: Optional[int],
                   workdir: pathlib.Path) -> None:
  """Refuse, on every process at once, a job whose processes were started differently: another
  config, other code, another --num_processes, or a workdir that is not one shared directory
  (each process writes a token into it that every other one must read back)."""
  import jax  # pylint: disable=import-outside-toplevel
  me, count = jax.process_index(), jax.process_count()
  token = secrets.token_hex(8)
  tokens = workdir / ".job"
  tokens.mkdir(parents=True, exist_ok=True)
  (tokens / f"process-{me}").write_text(token)
  records = _allgather_json({"config": json.loads(config_json), "code": code_version(),
                             "jax": jax.__version__, "num_processes": num_processes_flag,
                             "token": token})
  seen = [(tokens / f"process-{k}").read_text() == r["token"]
          if (tokens / f"process-{k}").exists() else False for k, r in enumerate(records)]
  everyone_sees = _allgather_json(seen)  # also a barrier: every token was written before
  (tokens / f"process-{me}").unlink(missing_ok=True)
  problems = start_problems(records, everyone_sees, count, workdir)
  if problems:
    raise ConfigError(f"The {count} processes of this job were not started alike: "
                      f"{'; '.join(problems)}. Nothing was trained. Start every process with the "
                      f"same command, code and --workdir (only --process_id differs).")


def start_problems(records: list[dict], everyone_sees: list[list[bool]], count: int,
                   workdir: pathlib.Path) -> list[str]:
  """How the processes' start records differ from process 0's: config, code, --num_processes
  (against the `count` that joined), and which process could not read which one's token."""
  problems = []
  first = records[0]
  for k, record in enumerate(records[1:], start=1):
    if record["config"] != first["config"]:
      fields = _differences(first["config"], record["config"])
      problems.append(f"process {k}'s config differs from process 0's in {fields}")
    if (record["code"], record["jax"]) != (first["code"], first["jax"]):
      problems.append(f"process {k} runs other code (mnist_jax {record['code']}, JAX "
                      f"{record['jax']}) than process 0 (mnist_jax {first['code']}, JAX "
                      f"{first['jax']})")
  flags = {r["num_processes"] for r in records}
  if flags != {count}:
    problems.append(f"the processes were started with --num_processes "
                    f"{' and '.join(str(f) for f in sorted(flags, key=str))}, but {count} joined")
  blind = [(k, j) for k, row in enumerate(everyone_sees) for j, ok in enumerate(row) if not ok]
  if blind:
    problems.append(f"the workdir {workdir} is not one directory shared by every process "
                    f"(process {blind[0][0]} cannot see what process {blind[0][1]} wrote there): "
                    f"give every process the same --workdir on storage all hosts mount")
  return problems


def _differences(a: dict, b: dict) -> str:
  from mnist_jax.hyperparams import flatten  # pylint: disable=import-outside-toplevel
  a, b = flatten(a), flatten(b)
  names = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  return ", ".join(f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in names[:4]) + (
      f" and {len(names) - 4} more" if len(names) > 4 else "")


def any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process of the job (itself when it runs alone): the job's
  agreement, at the same point of every process's loop, on a stop one of them was asked for."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return flag
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))
