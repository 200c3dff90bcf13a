"""What the command-line programs share: flags parsed afresh on every call, one error format."""
from conftest import assert_clear_error, run_program


def test_each_call_starts_from_the_flags_defaults(trained_run):
  first = run_program("predict", f"--workdir={trained_run}", "--index=3")
  assert first.returncode == 0 and "True label" in first.stdout, first.stderr
  again = run_program("predict", f"--workdir={trained_run}")  # --index is not remembered
  assert_clear_error(again, 1, "ERROR: Give one image file, or --index=N")


def test_a_misspelt_flag_is_one_paragraph_and_exit_2():
  result = run_program("report", "--workdri=runs/x")
  assert_clear_error(result, 2, "ERROR: Unknown command line flag 'workdri'",
                     "Run with --helpfull to see all flags.")


def test_a_program_that_needs_a_workdir_says_so():
  assert_clear_error(run_program("report"), 1, "ERROR: --workdir is required")


def test_run_sh_sets_up_its_own_venv_and_leaves_one_made_by_hand_alone(tmp_path):
  """A .venv made by hand (for a GPU, or with requirements-jax011.txt) has no
  requirements.installed: run.sh uses it as it is. Its own .venv it sets up again when
  requirements.txt changes. Run with a stand-in python that prints what it is asked."""
  import shutil
  import subprocess  # pylint: disable=import-outside-toplevel,multiple-imports

  from conftest import REPO  # pylint: disable=import-outside-toplevel
  for name in ("run.sh", "requirements.txt"):
    shutil.copy(REPO / name, tmp_path)
  python = tmp_path / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text('#!/bin/sh\necho "python $*"\n')
  python.chmod(0o755)

  def run_sh():
    return subprocess.run(["bash", str(tmp_path / "run.sh"), "--config=adam_mlp"],
                          capture_output=True, text=True, check=True).stdout

  assert run_sh() == "python -m mnist_jax.main --config=adam_mlp\n"  # used as it is
  (tmp_path / ".venv" / "requirements.installed").write_text("jax==0.4.0\n")  # run.sh's, older
  out = run_sh()
  assert "Setting up .venv" in out and "python -m pip install --quiet -r requirements.txt" in out
  assert (tmp_path / ".venv" / "requirements.installed").read_text() == (
      tmp_path / "requirements.txt").read_text()
  assert run_sh() == "python -m mnist_jax.main --config=adam_mlp\n"  # up to date: used as it is
