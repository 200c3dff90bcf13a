"""What the command-line programs share: absl flags, one error format, an in-process entry point.

Every program (`main`, `report`, `predict`, `aggregate`, `results`, `verify`, `prepare_tfds`, and
the benchmark programs in experiments/benchmarks/) defines its flags at module level and ends with
`cli.start(main)`. `run(main, argv)` is the same program called from
Python (the tests do): it parses `argv` afresh, calls `main`, and returns the exit code instead
of leaving the interpreter. An `errors.Error` becomes one paragraph on stderr, no traceback, and
an exit code from the list below.
"""

import sys
from typing import Callable, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging

from mnist_jax import errors

# Shared by main (where the run writes; default runs/<config>), report and predict (the run to
# read): one definition, so the programs can import each other.
WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory, e.g. runs/adam_mlp.")

# Exit codes, the one list of them:
#   0  success (verify: your runs agree with the committed result)
#   1  FAILED: the run failed, or the program could not do what was asked (one paragraph says why;
#      verify: an unfinished run, a sweep, no committed result, or a run of another config)
#   2  USAGE: the command line is wrong (an unknown flag, a bad --config or override)
#   3  DISAGREES: verify compared your runs with the committed result, and they disagree
#   75 LOST_PROCESS: a process of a multi-host job was lost; the same command resumes
#   130 INTERRUPTED: stopped by SIGINT/SIGTERM after a checkpoint; the same command resumes
USAGE, FAILED, DISAGREES, INTERRUPTED, LOST_PROCESS = 2, 1, 3, 130, 75


def fail(message: str, code: int = FAILED) -> int:
  """Print `message` as the one-paragraph error a user reads; returns `code` for the exit."""
  print(f"\nERROR: {message}", file=sys.stderr)
  return code


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parsing of `argv` (program name first); a bad flag is a ConfigError."""
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    raise errors.ConfigError(f"{e}. Run with --helpfull to see all flags.") from None


def require_workdir() -> str:
  if not WORKDIR.value:
    raise errors.ConfigError("--workdir is required: the directory of a run, e.g. "
                             "--workdir=runs/adam_mlp.")
  return WORKDIR.value


def run(main: Callable[[list[str]], Optional[int]], argv: Sequence[str],
        parse: Callable[[Sequence[str]], list[str]] = parse_flags) -> int:
  """Parse `argv` into the flags (every flag back to its default first), call `main` with the
  positional arguments, and return the exit code."""
  flags.FLAGS.unparse_flags()
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
  try:
    args = parse(argv)[1:]
  except errors.Error as e:
    return fail(str(e), USAGE)
  try:
    return main(args) or 0
  except errors.RunInterrupted as e:
    print(f"\n{e}", file=sys.stderr)
    return INTERRUPTED
  except errors.LostProcess as e:
    return fail(str(e), LOST_PROCESS)
  except errors.Error as e:
    return fail(str(e), FAILED)


def start(main: Callable[[list[str]], Optional[int]],
          parse: Optional[Callable[[Sequence[str]], list[str]]] = parse_flags) -> None:
  """`if __name__ == "__main__": cli.start(main)`: the program as a process. With `parse=None`,
  `main` is a whole program already, argv -> exit code (`main.run`)."""
  app.define_help_flags()  # --help, --helpfull, as under absl's app.run
  sys.exit(main(sys.argv) if parse is None else run(main, sys.argv, parse))
