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
