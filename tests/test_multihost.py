"""Multi-host jobs that fail well, with two CPU processes on localhost standing in for two hosts:
a lost process or coordinator, a preempted process, and processes started differently.

The jobs are in the slow tier (real processes, some killed); what reads their logs and records
is in the fast one."""

import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, records, restore, without
from mnist_jax import multihost

HEARTBEAT = 5  # --heartbeat_timeout of these jobs, seconds
# 6000 images, 40 epochs: about 0.2 s an epoch, so a fault lands mid-run; a checkpoint whenever
# the last save is written, so the job has one after a few epochs.
RUN = ("--config=adam_mlp", "--config.data.source=idx", "--config.data.train_subset=6000",
       "--config.train.epochs=40", "--config.train.batch_size=128",
       "--config.train.min_seconds_between_checkpoints=0", "--noreport", "--distributed",
       "--num_processes=2", f"--heartbeat_timeout={HEARTBEAT}", "--init_timeout=60")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(k: int, port: int, workdir, *extra) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "mnist_jax.main", *RUN, f"--coordinator_address=localhost:{port}",
       f"--process_id={k}", f"--workdir={workdir}", *extra],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _job(workdir, extra=((), ())) -> list[subprocess.Popen]:
  port = _free_port()
  return [_start(k, port, workdir, *extra[k]) for k in (0, 1)]


def _finish(processes, timeout=300) -> list[tuple[int, str, str]]:
  return [(p.wait(timeout=timeout),) + p.communicate() for p in processes]


def _wait_for_checkpoint(processes, workdir, epoch=3, timeout=180):
  """Until a checkpoint of `epoch` or later exists (a due one may be skipped while the previous
  is still being written)."""
  deadline = time.monotonic() + timeout
  while not [p for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()
             and int(p.name) >= epoch]:
    assert all(p.poll() is None for p in processes), _finish(processes)
    assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} after {timeout} s"
    time.sleep(0.05)


def _last_paragraph(stderr: str) -> str:
  return stderr.strip().split("\n\n")[-1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted two-process run of RUN."""
  workdir = tmp_path_factory.mktemp("straight")
  results = _finish(_job(workdir))
  assert [r[0] for r in results] == [0, 0], results
  return workdir


def _assert_same_run(workdir, reference):
  (state, epoch), (expected, expected_epoch) = restore(workdir), restore(reference)
  assert epoch == expected_epoch == 40
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(x, y)
  assert ([without(r, "seconds") for r in records(workdir)]
          == [without(r, "seconds") for r in records(reference)])


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["a worker", "the coordinator"])
def test_a_lost_process_stops_the_job_then_the_same_command_resumes_it_exactly(
    straight, tmp_path, victim):
  workdir = tmp_path / "run"
  processes = _job(workdir)
  _wait_for_checkpoint(processes, workdir)
  processes[victim].kill()
  killed = time.monotonic()
  survivor = processes[1 - victim]
  code, _, stderr = _finish([survivor], timeout=4 * HEARTBEAT + 60)[0]
  stopped_after = time.monotonic() - killed
  processes[victim].wait()

  assert code == 75, stderr
  assert stopped_after < 2 * HEARTBEAT + 10, stopped_after
  message = _last_paragraph(stderr)
  assert message.startswith("ERROR: "), stderr[-2000:]
  cause = ("Process 1 of 2 stopped responding (no heartbeat for 5 s" if victim == 1 else
           "The coordinator (process 0, localhost:")
  assert cause in message, message
  epoch = int(re.search(r"the last complete checkpoint is of epoch (\d+)", message).group(1))
  assert (workdir / "checkpoints" / str(epoch)).is_dir()
  assert "run the same command again on every host, each with its own --process_id: " \
         "python -m mnist_jax.main --config=adam_mlp" in message
  assert "--process_id=K" in message
  assert not re.search(r"^\s+@\s+0x", stderr, re.M)  # no native stack frames
  assert "Traceback" not in stderr

  results = _finish(_job(workdir))  # the same command, on every "host"
  assert [r[0] for r in results] == [0, 0], results
  assert "Resuming from the checkpoint after epoch" in results[0][1]
  _assert_same_run(workdir, straight)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_the_whole_job_at_one_epoch_then_resumes_exactly(
    straight, tmp_path):
  workdir = tmp_path / "run"
  processes = _job(workdir)
  _wait_for_checkpoint(processes, workdir)
  processes[1].send_signal(signal.SIGTERM)
  results = _finish(processes, timeout=60)
  assert [r[0] for r in results] == [130, 130], results
  epochs = {int(re.search(r"after epoch (\d+) of 40; checkpoint saved", r[2]).group(1))
            for r in results}
  assert len(epochs) == 1, results  # both stopped after the same epoch
  assert "Stopped by SIGTERM" in results[1][2]
  assert "Stopped by a signal to another process of the job" in results[0][2]
  assert "Run the same command again on every host to resume." in results[0][2]
  assert restore(workdir)[1] == epochs.pop()

  results = _finish(_job(workdir))
  assert [r[0] for r in results] == [0, 0], results
  _assert_same_run(workdir, straight)


@pytest.mark.slow
def test_a_process_that_never_arrives_is_refused_within_the_init_timeout(tmp_path):
  started = time.monotonic()
  code, _, stderr = _finish([_start(0, _free_port(), tmp_path, "--init_timeout=5")])[0]
  assert code == 2, stderr
  assert time.monotonic() - started < 5 + 30
  assert ("Process 0 of 2 waited 5 s for the job's 2 processes to meet at the coordinator "
          "localhost:") in _last_paragraph(stderr)
  assert "Nothing was trained" in stderr and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_a_taken_coordinator_port_is_refused(tmp_path):
  with socket.socket(socket.AF_INET6) as taken:
    taken.bind(("::", 0))
    taken.listen()
    port = taken.getsockname()[1]
    code, _, stderr = _finish([_start(0, port, tmp_path)])[0]
  assert code == 2, stderr
  assert (f"The coordinator's address localhost:{port} cannot be used: its port is taken"
          in _last_paragraph(stderr))


@pytest.mark.slow
@pytest.mark.parametrize("mismatch", ["config", "num_processes", "workdir"])
def test_processes_started_differently_are_refused_before_training(tmp_path, mismatch):
  extra = {"config": ((), ("--config.train.epochs=3",)),
           "num_processes": ((), ("--num_processes=3",)),
           "workdir": ((), (f"--workdir={tmp_path / 'elsewhere'}",))}[mismatch]
  results = _finish(_job(tmp_path / "run", extra), timeout=120)
  assert [r[0] for r in results] == [2, 2], results
  expected = {"config": "process 1's config differs from process 0's in train.epochs (40 vs 3)",
              "num_processes": "started with --num_processes 2 and 3, but 2 joined",
              "workdir": "is not one directory shared by every process"}[mismatch]
  for _, _, stderr in results:
    assert expected in _last_paragraph(stderr), stderr
    assert "Nothing was trained" in stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# What the supervisor reads and says


JOB = multihost.Job(process_id=0, num_processes=2, coordinator="host0:1234", workdir="",
                    heartbeat_timeout=30, init_timeout=120, started=True)
ARGV = ["main", "--config=adam_mlp", "--distributed", "--process_id=0", "--num_processes=2"]


@pytest.mark.parametrize("code,log,expected,exit_code", [
    (-6, "E... The following tasks are unhealthy (stopped sending heartbeats):\n1\nThe tasks",
     "Process 1 of 2 stopped responding (no heartbeat for 30 s", 75),
    (-6, "... PollForError: {grpc_status:14, grpc_message:\"Connection reset by peer\"}",
     "The coordinator (process 0, host0:1234) stopped responding", 75),
    (-9, "", "Process 0 of 2 was killed (SIGKILL: by a user, or out of memory)", 75),
    (-11, "E add_port.cc:83] Failed to add port to server: No address added",
     "The coordinator's address host0:1234 cannot be used: its port is taken", 2),
])
def test_the_supervisor_names_the_cause_from_the_runtime_log(tmp_path, code, log, expected,
                                                             exit_code):
  (tmp_path / "checkpoints" / "12").mkdir(parents=True)
  (tmp_path / "checkpoints" / "13.orbax-checkpoint-tmp-1700000000").mkdir()  # unfinished
  job = multihost.Job(**{**JOB.__dict__, "workdir": str(tmp_path)})
  message, returned = multihost.explain(code, log, job, ARGV)
  assert returned == exit_code and expected in message, message
  if exit_code == 75:
    assert f"the last complete checkpoint is of epoch 12, in {tmp_path}/checkpoints" in message
    assert message.endswith("python -m mnist_jax.main --config=adam_mlp --distributed "
                            "--process_id=K --num_processes=2")


def test_a_taken_port_that_jax_raises_rather_than_crashes_on_is_the_same_usage_error(
    monkeypatch, tmp_path):
  def refuse(**_):
    raise jax.errors.JaxRuntimeError("UNKNOWN: Failed to start RPC server")
  monkeypatch.setattr(jax.distributed, "initialize", refuse)
  monkeypatch.delenv("MNIST_JAX_SUPERVISOR_FILE", raising=False)
  with pytest.raises(multihost.ConfigError, match="address host0:1234 cannot be used: its port "
                     "is taken .* e.g. host0:1235"):
    multihost.initialize("host0:1234", 2, 0, 120, 30, str(tmp_path))


def test_a_job_that_never_met_is_a_start_failure():
  job = multihost.Job(**{**JOB.__dict__, "started": False})
  message, code = multihost.explain(-6, "DEADLINE_EXCEEDED RPC: /CoordinationService/RegisterTask",
                                    job, ARGV)
  assert code == 2 and "waited 120 s for the job's 2 processes" in message


def test_start_records_that_differ_are_named(tmp_path):
  record = {"config": {"train": {"epochs": 5}}, "code": "abc", "jax": "0.10.2",
            "num_processes": 2, "token": "t"}
  other = {**record, "code": "def", "config": {"train": {"epochs": 6}}}
  problems = multihost.start_problems([record, other], [[True, False], [True, True]], 2, tmp_path)
  assert problems[0] == "process 1's config differs from process 0's in train.epochs (5 vs 6)"
  assert problems[1].startswith("process 1 runs other code (mnist_jax def, JAX 0.10.2) than "
                                "process 0 (mnist_jax abc")
  assert (f"the workdir {tmp_path} is not one directory shared by every process (process 0 "
          f"cannot see what process 1 wrote there)") in problems[2]
  assert multihost.start_problems([record, record], [[True] * 2] * 2, 2, tmp_path) == []


def test_only_a_distributed_launch_is_supervised(monkeypatch):
  monkeypatch.delenv("MNIST_JAX_SUPERVISOR_FILE", raising=False)
  assert multihost.should_supervise(["main", "--config=adam_mlp", "--distributed"])
  assert not multihost.should_supervise(["main", "--config=adam_mlp"])
  monkeypatch.setenv("MNIST_JAX_SUPERVISOR_FILE", "/tmp/x")  # the supervised child itself
  assert not multihost.should_supervise(["main", "--config=adam_mlp", "--distributed"])
