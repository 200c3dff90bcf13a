"""The run directory as a format: its files, the never-overwrite rules, reading a run back."""
import json
import re
import shutil

import pytest

from conftest import TINY_FLAGS, assert_clear_error, run_cli, run_main, run_program, threads_left
from mnist_jax import config as config_lib
from mnist_jax import workdir as workdir_lib


def test_history_drops_later_epochs_and_a_line_cut_by_a_kill(tmp_path):
  lines = [json.dumps({"epoch": e, "train_loss": 1.0 / e}) for e in (1, 2, 3)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 4, "tra')
  history, missing = workdir_lib.read_history(tmp_path, 3)
  assert [r["epoch"] for r in history] == [1, 2, 3] and missing == []
  history, missing = workdir_lib.read_history(tmp_path, 2)
  assert [r["epoch"] for r in history] == [1, 2] and missing == []
  assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:2]) + "\n"


def test_blank_lines_are_skipped_and_the_records_after_them_kept(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n\n  \n{"epoch": 2}\n')
  assert workdir_lib.read_metrics(tmp_path) == [{"epoch": 1}, {"epoch": 2}]


def test_history_names_the_epochs_it_has_no_record_of(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 2}) + "\n"
                                          + json.dumps({"no": "epoch"}) + "\n")
  history, missing = workdir_lib.read_history(tmp_path, 3)
  assert history == [{"epoch": 2}] and missing == [1, 3]  # a record of no epoch is no epoch's


def test_default_workdir_resumes_an_unfinished_run_and_never_reuses_a_finished_one(tmp_path,
                                                                                  monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_lib.load("adam_mlp")
  first = workdir_lib.default_workdir("adam_mlp", config)
  assert first == tmp_path.joinpath("runs", "adam_mlp").relative_to(tmp_path)
  workdir_lib.prepare(first, config, overwrite=False)
  assert workdir_lib.default_workdir("adam_mlp", config) == first  # unfinished: resume it
  workdir_lib.write_summary(first, {"test_accuracy": 0.9})
  assert workdir_lib.default_workdir("adam_mlp", config) == first  # its report is missing
  (first / "report.md").write_text("# done\n")
  assert str(workdir_lib.default_workdir("adam_mlp", config)).endswith("adam_mlp-2")
  other = config_lib.load("adam_mlp")
  other.seed = 7
  assert str(workdir_lib.default_workdir("adam_mlp", other)).endswith("adam_mlp-2")


def test_overwrite_deletes_every_file_a_run_and_its_report_write(tmp_path):
  from mnist_jax import report  # pylint: disable=import-outside-toplevel
  config = config_lib.load("adam_mlp")
  for name in workdir_lib.RUN_FILES:
    (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("x")
  (tmp_path / "mine.txt").write_text("not the run's")
  workdir_lib.prepare(tmp_path, config, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "mine.txt"]
  assert "report.md" in workdir_lib.REPORT_FILES and set(report.FIGURES)


def test_finished_run_is_not_overwritten(tmp_path):
  run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS)
  before = (tmp_path / "summary.json").read_text()
  result = run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, check=False)
  assert result.returncode != 0 and "holds a finished run" in result.stderr
  assert (tmp_path / "summary.json").read_text() == before
  result = run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS,
                   "--config.seed=5", check=False)
  assert result.returncode != 0 and "different config" in result.stderr
  run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, "--overwrite")


def test_a_run_from_before_a_config_field_existed_is_still_its_config(tmp_path):
  """A field added to mnist_jax after a run started (its config.json lacks it) takes its default,
  which does what the run did: the run resumes, and only another value is another config."""
  config = config_lib.load("ladder_amlp")
  workdir_lib.prepare(tmp_path, config, overwrite=False)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["model"]["combinator_hidden"]  # added to mnist_jax after such a run started
  (tmp_path / "config.json").write_text(json.dumps(saved))
  workdir_lib.check(tmp_path, config, overwrite=False)  # the same config: no error
  other = config.copy_and_resolve_references()
  other.model.combinator_hidden = (2, 2)
  with pytest.raises(workdir_lib.ConfigError, match="different config"):
    workdir_lib.check(tmp_path, other, overwrite=False)
  # A section that this mnist_jax does not know (from a later one) is read as it is, and is not
  # taken for this config's.
  saved["future"] = {"field": 1}
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert workdir_lib.load_config(tmp_path).future.field == 1
  with pytest.raises(workdir_lib.ConfigError, match="different config"):
    workdir_lib.check(tmp_path, config, overwrite=False)


def test_load_run_gives_each_replica_s_parameters_and_its_history(tmp_path):
  import threading  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, "--noreport",
           "--config.num_seeds=2")
  threads = set(threading.enumerate())
  first, second = workdir_lib.load_run(tmp_path), workdir_lib.load_run(tmp_path, replica=1)
  assert threads_left(threads) == []  # orbax's threads released
  assert first.epoch == second.epoch == 2 and [r["epoch"] for r in first.history] == [1, 2]
  kernels = [run.state.params["dense_0"]["kernel"] for run in (first, second)]
  assert kernels[0].shape == kernels[1].shape == (784, 100)
  assert not np.array_equal(kernels[0], kernels[1])
  with pytest.raises(workdir_lib.RunError, match="Replica 2 does not exist: the run has 2"):
    workdir_lib.load_run(tmp_path, replica=2)


def test_a_directory_without_a_run_is_named(tmp_path):
  with pytest.raises(workdir_lib.RunError, match="is not the workdir of a run"):
    workdir_lib.load_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# One writer per run


def _lock_probe(lock_file) -> str:
  """"held" or "free": whether another process could take the workdir's flock now."""
  import subprocess
  import sys  # pylint: disable=import-outside-toplevel,multiple-imports
  probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\ntry:\n"
           "  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n  print('free')\n"
           "except BlockingIOError:\n  print('held')")
  return subprocess.run([sys.executable, "-c", probe, str(lock_file)], capture_output=True,
                        text=True, check=True).stdout.strip()


def test_the_lock_is_held_for_the_block_re_entrant_and_names_its_holder(tmp_path):
  import os  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "runs" / "run"
  lock_file = workdir / workdir_lib.LOCK
  with workdir_lib.lock(workdir):  # creates the workdir, its parents too
    assert _lock_probe(lock_file) == "held"
  lock_file.write_text("an older holder's longer line " * 10)
  with workdir_lib.lock(workdir):
    assert _lock_probe(lock_file) == "held"
    assert re.fullmatch(f"PID {os.getpid()} on host [^,]+, started [^\n]+\n", lock_file.read_text())
    with workdir_lib.lock(workdir):  # main's block around train_and_evaluate's
      assert _lock_probe(lock_file) == "held"
    assert _lock_probe(lock_file) == "held"  # the inner block did not release it
  assert _lock_probe(lock_file) == "free" and lock_file.read_text() == ""
  with workdir_lib.lock(workdir):  # taken again once released
    assert _lock_probe(lock_file) == "held"


def test_a_held_lock_refuses_a_second_writer_and_only_process_0_locks(tmp_path, monkeypatch):
  import subprocess
  import sys  # pylint: disable=import-outside-toplevel,multiple-imports
  holder = subprocess.Popen(  # another process holding the lock, as workdir.lock does
      [sys.executable, "-c", "import fcntl, os, sys, time\n"
       "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
       "os.write(fd, b'PID 12345 on host elsewhere')\nprint('held', flush=True)\ntime.sleep(600)",
       str(tmp_path / workdir_lib.LOCK)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirBusy, match="in use by PID 12345 on host elsewhere"):
      with workdir_lib.lock(tmp_path):
        pass
    assert (tmp_path / workdir_lib.LOCK).read_text() == "PID 12345 on host elsewhere"
  finally:
    holder.kill()
    holder.wait()
  monkeypatch.setattr(workdir_lib.parallel, "is_primary", lambda: False)
  with workdir_lib.lock(tmp_path / "other"):  # process 0 of the job holds the lock
    assert not (tmp_path / "other").exists()


def test_a_workdir_that_cannot_be_created_is_named(tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(workdir_lib.ConfigError, match="Cannot write to workdir .*a_file/run"):
    with workdir_lib.lock(tmp_path / "a_file" / "run"):
      pass


@pytest.mark.parametrize("error, words", [
    (OSError(28, "No space left on device"), "(No space left on device). .* Free some space"),
    (OSError(30, "Read-only file system"), "(Read-only file system). .* Make the directory "
                                           "writable again"),
    (OSError(13, "Permission denied"), "Make the directory writable again"),
    (OSError(1, "Operation not permitted"), "Make the directory writable again"),
    (OSError(5, "Input/output error"), "(Input/output error). .* Fix the storage"),
    (OSError("the disk went away"), "(the disk went away). .* Fix the storage"),
])
def test_a_failed_write_is_one_paragraph_with_its_fix(tmp_path, error, words):
  message = str(workdir_lib.write_error(tmp_path / "metrics.jsonl", error))
  assert message.startswith(f"Cannot write {tmp_path / 'metrics.jsonl'} (")
  assert re.search(words.replace("(", r"\(").replace(")", r"\)"), message), message


@pytest.mark.slow
def test_a_second_process_is_refused_while_the_first_holds_the_workdir(tmp_path):
  """Two copies of one command (a scheduler's restart, a second terminal): the second refuses at
  once, naming the holder; the first trains on, and every epoch is recorded once."""
  import signal
  import subprocess
  import sys
  import time  # pylint: disable=import-outside-toplevel,multiple-imports

  from conftest import REPO, assert_clear_error  # pylint: disable=import-outside-toplevel
  command = [sys.executable, "-m", "mnist_jax.main", "--config=adam_mlp",
             "--config.data.source=idx", "--config.train.epochs=100", "--noreport",
             f"--workdir={tmp_path}"]  # far longer than the test: stopped below
  first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  deadline = time.monotonic() + 120
  while not (tmp_path / ".lock").exists() or not (tmp_path / ".lock").read_text():
    assert first.poll() is None and time.monotonic() < deadline, first.communicate()
    time.sleep(0.01)
  second = run_cli(*command[3:], check=False)
  assert_clear_error(second, 1, f"{tmp_path.resolve()} is in use by PID {first.pid} on host",
                     "started", "use another --workdir")
  assert first.poll() is None  # the first trains on, untouched
  first.send_signal(signal.SIGTERM)  # it saves and stops after the current epoch
  assert first.wait(timeout=300) == 130, first.communicate()
  epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert epochs == list(range(1, len(epochs) + 1))  # each epoch once


@pytest.mark.slow
def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
  import signal
  import subprocess
  import sys  # pylint: disable=import-outside-toplevel,multiple-imports

  from conftest import REPO  # pylint: disable=import-outside-toplevel
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from mnist_jax import workdir\n"
       "with workdir.lock(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)",
       str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(workdir_lib.WorkdirBusy, match=f"PID {holder.pid}"):
    with workdir_lib.lock(tmp_path):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir_lib.lock(tmp_path):  # the kernel released it with the process
    with workdir_lib.lock(tmp_path):  # and it is re-entrant within a process
      pass


# ---------------------------------------------------------------------------------------------
# Damaged files of a run, through every program that reads them


def _files(directory):
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
          if p.is_file()}


def _damage(path, how):
  if how == "missing":
    path.unlink()
  elif how == "truncated":
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  else:
    path.write_bytes(b"\x00\xffnot json at all\n")


PROGRAMS = {  # program -> its arguments for the run in WORKDIR
    "main": ("--config=adam_mlp_784", *TINY_FLAGS, "--noreport", "--workdir=WORKDIR"),
    "report": ("--workdir=WORKDIR",),
    "predict": ("--workdir=WORKDIR", "--index=0"),
    "aggregate": ("WORKDIR",),
    "verify": ("WORKDIR",),
}


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("name,how", [("config.json", "truncated"), ("config.json", "garbage"),
                                      ("summary.json", "truncated"), ("summary.json", "garbage"),
                                      ("metrics.jsonl", "garbage before its last line")])
def test_a_damaged_run_file_gives_one_paragraph_naming_it_and_deletes_nothing(
    trained_run, tmp_path, program, name, how):
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir)
  if name == "metrics.jsonl":
    if program == "main":
      (workdir / "summary.json").unlink()  # main reads the records of a run it resumes
    lines = (workdir / name).read_text().splitlines()
    (workdir / name).write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
  else:
    _damage(workdir / name, how)
  before = _files(workdir)
  args = [a.replace("WORKDIR", str(workdir)) for a in PROGRAMS[program]]
  result = run_program(program, *args)
  assert_clear_error(result, 1, f"{workdir / name} is damaged: ", "Nothing was changed or deleted")
  assert _files(workdir) == before


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_missing_run_file_is_what_it_means_never_a_traceback(trained_run, tmp_path, program):
  """Without config.json a directory is no run (main starts one there); without summary.json a
  run has not finished (main finishes it)."""
  for name in ("config.json", "summary.json"):
    workdir = tmp_path / name
    shutil.copytree(trained_run, workdir)
    (workdir / name).unlink()
    args = [a.replace("WORKDIR", str(workdir)) for a in PROGRAMS[program]]
    result = run_program(program, *args)
    assert "Traceback" not in result.stderr, result.stderr
    if program == "main":
      assert result.returncode == 0, result.stderr
      assert (workdir / "summary.json").exists()
    elif name == "config.json":
      assert_clear_error(result, 1, "is not the workdir of a run (it has no config.json)")
    elif program in ("aggregate", "verify"):
      assert_clear_error(result, 1, "has not finished")
    else:  # the report and predict read an unfinished run's last checkpoint
      assert result.returncode == 0, result.stderr


def test_a_line_cut_short_at_the_end_of_metrics_is_tolerated_everywhere(trained_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"epoch": 3, "train_lo')  # a kill while the record was appended
  assert len(workdir_lib.read_metrics(workdir)) == 2
  assert run_program("report", f"--workdir={workdir}").returncode == 0
  assert run_program("aggregate", str(workdir)).returncode == 0
