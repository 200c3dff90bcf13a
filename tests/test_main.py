"""The command line, as a user runs it: runs, overrides, and one clear paragraph for bad input.

In this process through `main.run(argv)`; the `slow` tests start real processes."""
import json
import shutil

import jax
import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, assert_clear_error, restore, run_cli, run_main, run_program


def test_cli_unknown_name_and_bad_override_fail_clearly():
  assert_clear_error(run_main("--config=nope", check=False), 2, "Unknown config 'nope'",
                     "adam_mlp")
  assert_clear_error(run_main("--config=adam_mlp", "--config.train.epoch=3", check=False), 2,
                     "Bad --config override", "epochs")

  result = run_main("--config=adam_mlp", "--config.train.batch_size=-4", check=False)
  assert result.returncode != 0 and "batch_size=-4 must be positive" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("run", [run_main, run_cli], ids=["in_process", "processes"])
def test_cli_end_to_end_run_is_reproducible(tmp_path, run):
  runs = []
  for name in ("a", "b"):
    workdir = tmp_path / name
    result = run("--config=adam_mlp", f"--workdir={workdir}", *TINY_FLAGS)
    runs.append(workdir)
  out = result.stdout
  assert "Epoch 1/2" in out and "Epoch 2/2" in out and "Test loss" in out
  assert "Total params: 79,510" in out
  config = json.loads((runs[0] / "config.json").read_text())
  assert config["train"]["epochs"] == 2 and config["data"]["train_subset"] == 600
  records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert {"train_loss", "train_accuracy", "seconds", "learning_rate"} <= set(records[0])
  summary = json.loads((runs[0] / "summary.json").read_text())
  assert 0.5 < summary["test_accuracy"] <= 1.0
  (sa, ea), (sb, eb) = restore(runs[0]), restore(runs[1])
  assert ea == eb == 2
  for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
    np.testing.assert_array_equal(x, y)  # bit-identical


def test_cli_validation_and_overrides(tmp_path):
  result = run_main("--config=sgd_bn_mlp", f"--workdir={tmp_path}", *TINY_FLAGS,
                   "--config.train.epochs=1", "--config.model.hidden_sizes=16,8")
  assert "val_accuracy" in result.stdout
  assert "1,568 non-trainable" in result.stdout  # BatchNorm statistics
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"]["hidden_sizes"] == [16, 8] and config["train"]["epochs"] == 1


def test_cli_names_every_out_of_range_value_at_once(tmp_path):
  result = run_main("--config=adam_mlp", "--config.train.batch_size=0",
                   "--config.optimizer.learning_rate=0", "--config.train.epochs=0",
                   "--config.model.input_dropout=1.0", "--config.data.validation_fraction=1.5",
                   f"--workdir={tmp_path}", check=False)
  assert_clear_error(result, 2, "ERROR: Invalid config", "batch_size=0 must be positive",
                      "learning_rate=0.0 must be in (0, inf)", "epochs=0 must be at least 1",
                      "input_dropout=1.0 must be in [0, 1)", "validation_fraction=1.5 must be in (0, 1)")
  assert not any(tmp_path.iterdir())


def test_cli_batch_larger_than_training_set(tmp_path):
  result = run_main("--config=adam_mlp", "--config.data.source=idx",
                   "--config.data.train_subset=100", "--config.train.batch_size=128",
                   f"--workdir={tmp_path}", check=False)
  assert_clear_error(result, 1, "batch_size=128 is larger than the training set (100 examples)")
  assert not (tmp_path / "config.json").exists()  # so the corrected command is not refused


def test_cli_corrupted_data_file(tmp_path):
  idx_dir = tmp_path / "mnist"
  shutil.copytree(REPO / "data" / "mnist", idx_dir)
  labels = idx_dir / "t10k-labels-idx1-ubyte.gz"
  labels.write_bytes(labels.read_bytes()[:-100])  # truncated
  result = run_main("--config=adam_mlp", "--config.data.source=idx",
                   f"--config.data.idx_dir={idx_dir}", f"--workdir={tmp_path / 'run'}",
                   check=False)
  assert_clear_error(result, 1, f"Checksum mismatch for {labels}",
                      "The file is corrupt or truncated", "Replace it with the official file")


def test_cli_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"  # a directory cannot be made under a file, even by root
  blocker.write_text("")
  result = run_main("--config=adam_mlp", "--config.data.source=idx",
                   f"--workdir={blocker / 'run'}", check=False)
  assert_clear_error(result, 1, f"Cannot write to workdir {blocker / 'run'}",
                      "Choose a writable --workdir")


def test_cli_config_file_with_a_syntax_error(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text("from mnist_jax.config import default_config\ndef get_config():\n"
                  "  c = default_config(\n  return c\n")
  result = run_main(f"--config={path}", check=False)
  assert_clear_error(result, 2, f"Config file {path} does not parse", "at line 3")


def test_profile_epoch_traces_that_epoch_into_the_workdir_and_not_into_the_config(tmp_path):
  result = run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, "--noreport",
                    "--profile_epoch=2")
  assert f"Profiling epoch 2: a jax.profiler trace into {tmp_path / 'profile'}" in result.stdout
  runs = list((tmp_path / "profile" / "plugins" / "profile").iterdir())  # one per trace
  assert len(runs) == 1
  assert list(runs[0].glob("*.xplane.pb")) and (runs[0] / "perfetto_trace.json.gz").exists()
  assert "profile" not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize("epoch", [0, 3])
def test_a_profile_epoch_the_run_does_not_train_is_refused_clearly(tmp_path, epoch):
  result = run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS,
                    f"--profile_epoch={epoch}", check=False)
  assert_clear_error(result, 2, f"--profile_epoch={epoch} is not an epoch of this run",
                     "epochs 1 to 2 (config.train.epochs)")
  assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Killed while writing the report


def test_the_same_command_completes_a_report_cut_short(tmp_path):
  """A run whose training finished but whose report did not (killed while writing it): the same
  command writes the report without training again, and refuses nothing."""
  run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, "--noreport")
  summary = (tmp_path / "summary.json").read_text()
  (tmp_path / "figures").mkdir()
  (tmp_path / "figures" / "curves.png").write_bytes(b"\x89PNG half")  # what a kill leaves
  result = run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS)
  assert "not its complete report" in result.stdout and "Epoch" not in result.stdout
  assert (tmp_path / "report.md").exists() and (tmp_path / "summary.json").read_text() == summary
  assert (tmp_path / "figures" / "curves.png").stat().st_size > 5000
  result = run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS, check=False)
  assert result.returncode == 1 and "holds a finished run" in result.stderr  # now complete


def test_the_report_waits_for_its_imports_preloaded_while_training(tmp_path, monkeypatch):
  """A first import of matplotlib in a fresh venv can take longer than a short run trains. The
  report must then wait for the thread that imports it: two threads importing one module at once
  can hand one of them a half-initialised module (AttributeError: module 'matplotlib' has no
  attribute 'get_data_path')."""
  import time  # pylint: disable=import-outside-toplevel

  from mnist_jax import report  # pylint: disable=import-outside-toplevel
  events, build = [], report.build

  def slow_preload():
    time.sleep(3.0)  # longer than the run trains
    events.append("imported")

  monkeypatch.setattr(report, "preload", slow_preload)
  monkeypatch.setattr(report, "build", lambda workdir: events.append("report") or build(workdir))
  run_main("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS)
  assert events == ["imported", "report"]


# ---------------------------------------------------------------------------------------------
# Every override, fuzzed


def _override_values():
  from hypothesis import strategies as st  # pylint: disable=import-outside-toplevel
  return st.one_of(
      st.integers(-10**12, 10**12).map(str),
      st.floats(allow_nan=True, allow_infinity=True).map(repr),
      st.sampled_from(["", "()", "(,)", "1,2", "0,0", "-3", "0", "1", "1e309", "true", "False",
                       "None", "relu", "idx", "tfds", "sgd", "[1]", "{}", "train_tail"]),
      st.text(max_size=6))


def _fuzz(check, examples):
  from hypothesis import HealthCheck, given, settings  # pylint: disable=import-outside-toplevel
  from hypothesis import strategies as st  # pylint: disable=import-outside-toplevel

  from mnist_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  fields = sorted(config_lib.flatten(config_lib.default_config().to_dict()))
  given(field=st.sampled_from(fields), value=_override_values())(
      settings(max_examples=examples, deadline=None, derandomize=True, database=None,
               suppress_health_check=list(HealthCheck))(check))()


def _parsed(field, value):
  """The config of `--config=adam_mlp --config.FIELD=VALUE`, or the ConfigError's text, checked
  to be what the user sees: the command exits 2 with it as one paragraph on stderr."""
  from mnist_jax import errors, main  # pylint: disable=import-outside-toplevel
  argv = ["--config=adam_mlp", f"--config.{field}={value}"]
  try:
    main.parse(["main", *argv])
  except errors.ConfigError as e:
    message = str(e)
    seen = run_program("main", *argv)
    assert seen.returncode == 2 and seen.stderr == f"\nERROR: {message}\n", (field, value, seen)
    assert message.strip() and "\n\n" not in message, (field, value, message)
    return message
  return main._CONFIG.value  # pylint: disable=protected-access


def test_random_overrides_are_refused_clearly_or_accepted():
  """Random fields, random values of random types: each is refused with one paragraph (a
  ConfigError, never another exception), or accepted as a config that validates."""
  outcomes = {"refused": 0, "accepted": 0}

  def check(field, value):
    outcomes["refused" if isinstance(_parsed(field, value), str) else "accepted"] += 1

  _fuzz(check, examples=200)
  assert outcomes["refused"] and outcomes["accepted"], outcomes  # both paths were exercised


@pytest.mark.slow
def test_accepted_random_overrides_train(tmp_path_factory):
  """What the parser accepts trains: a tiny subset for one epoch leaves a consistent workdir, or
  stops before training with one paragraph. Bounded: 20 examples, a 256-example subset."""
  from mnist_jax import errors, loop, validation  # pylint: disable=import-outside-toplevel
  from mnist_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  trained = []

  def check(field, value):
    config = _parsed(field, value)
    if isinstance(config, str):
      return
    with config.unlocked():  # tiny, whatever the override asked for
      config.data.train_subset, config.train.epochs = 256, 1
      config.train.batch_size = min(config.train.batch_size, 256)
      config.train.early_stopping_patience = min(config.train.early_stopping_patience, 1)
    validation.validate(config)
    workdir = tmp_path_factory.mktemp("fuzz")
    try:
      loop.train_and_evaluate(config, workdir)
    except (errors.TrainingDiverged, errors.ConfigError, errors.DataError) as e:
      # What an accepted value may still meet: a learning rate that diverges, or a value that
      # only the data can refuse (a batch larger than the subset, too few classes, a dataset
      # name or directory with no dataset in it).
      assert str(e).strip() and "\n\n" not in str(e), (field, value, str(e))
      return
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1], (field, value)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["test_accuracy"] <= 1, (field, value)
    assert workdir_lib.load_config(workdir).to_dict() == config.to_dict()
    trained.append(field)

  _fuzz(check, examples=20)
  assert trained


def test_a_field_that_is_no_sweep_field_is_refused_with_the_shell_loop():
  result = run_main("--config=adam_mlp", "--config.sweep.model.hidden_sizes=100,300", check=False)
  assert_clear_error(result, 2, "--config.sweep.model.hidden_sizes is not a sweep field",
                     "--config.sweep.optimizer.learning_rate", "--config.sweep.model.input_dropout",
                     "for v in A B; do python -m mnist_jax.main --config=adam_mlp "
                     "--config.model.hidden_sizes=$v --workdir=runs/adam_mlp-hidden_sizes-$v; done")


# ---------------------------------------------------------------------------------------------
# Promises of docs/reliability.md


def test_a_model_too_large_to_fit_is_refused_before_anything_is_allocated(tmp_path):
  result = run_main("--config=adam_mlp", "--config.model.hidden_sizes=2000000",
                    f"--workdir={tmp_path}", "--config.data.source=idx", check=False)
  assert_clear_error(result, 1, "This config's training state needs about",
                     "more than half of the", "Use smaller config.model.hidden_sizes")
  assert not (tmp_path / "checkpoints").exists()


def test_a_second_stop_signal_stops_at_once():
  """The first SIGINT/SIGTERM asks for a checkpoint after the epoch; a second one stops now."""
  import signal  # pylint: disable=import-outside-toplevel

  from mnist_jax import loop  # pylint: disable=import-outside-toplevel
  with loop._StopSignals() as signals:  # pylint: disable=protected-access
    signals._handle(signal.SIGINT, None)  # pylint: disable=protected-access
    assert signals.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      signals._handle(signal.SIGTERM, None)  # pylint: disable=protected-access


@pytest.mark.slow
def test_a_second_stop_signal_ends_the_process_without_the_checkpoint(tmp_path):
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  flags = ("--config=adam_mlp", "--config.data.source=idx", "--config.train.epochs=50",
           "--noreport", f"--workdir={tmp_path}")
  process = subprocess.Popen([sys.executable, "-m", "mnist_jax.main", *flags], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while not (tmp_path / "checkpoints" / "1").exists():
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.01)
  # Both land during epoch 2's compiled call (seconds on 60,000 images), and Python runs their
  # handlers when it returns: two different signals, since a signal pending twice counts once.
  process.send_signal(signal.SIGINT)
  time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=30)
  assert process.returncode == 130, stderr
  assert "Interrupted without saving. Run the same command again to resume" in stderr, stderr
  assert "Traceback" not in stderr and not (tmp_path / "summary.json").exists()


def test_a_failed_report_write_stops_clearly_and_the_same_command_writes_the_report(
    tmp_path, monkeypatch):
  import errno  # pylint: disable=import-outside-toplevel

  from mnist_jax import report  # pylint: disable=import-outside-toplevel

  def full_disk(workdir):
    raise OSError(errno.ENOSPC, "No space left on device", str(workdir / "figures" / "curves.png"))

  flags = ("--config=adam_mlp", f"--workdir={tmp_path}", *TINY_FLAGS)
  with monkeypatch.context() as patch:
    patch.setattr(report, "build", full_disk)
    result = run_main(*flags, check=False)
  assert_clear_error(result, 1, f"Cannot write {tmp_path / 'figures' / 'curves.png'} (No space "
                     "left on device)", "Free some space", "run the same command again")
  assert (tmp_path / "summary.json").exists() and not (tmp_path / "report.md").exists()
  result = run_main(*flags)
  assert "not its complete report" in result.stdout and (tmp_path / "report.md").exists()
