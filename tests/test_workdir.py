"""The run directory as a format: its files, the never-overwrite rules, reading a run back."""
import json
import shutil

import pytest

from conftest import TINY_FLAGS, assert_clear_error, run_cli, run_main, run_program
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


def test_history_names_the_epochs_it_has_no_record_of(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 2}) + "\n")
  history, missing = workdir_lib.read_history(tmp_path, 3)
  assert [r["epoch"] for r in history] == [2] and missing == [1, 3]


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


def test_a_directory_without_a_run_is_named(tmp_path):
  with pytest.raises(workdir_lib.RunError, match="is not the workdir of a run"):
    workdir_lib.load_run(tmp_path)


# ---------------------------------------------------------------------------------------------
# One writer per run


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
