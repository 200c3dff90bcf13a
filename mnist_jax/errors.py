"""Every error mnist_jax reports to a user. A leaf: it imports nothing of the package.

Each message is one paragraph naming the problem and the fix; the command-line programs print it
without a traceback (`cli.fail`), and a notebook gets it as an ordinary exception.
"""


class Error(Exception):
  """Base of the errors whose message is meant for the user, as it is."""


class ConfigError(Error, ValueError):
  """A config that cannot be run."""


class DataError(Error, RuntimeError):
  """Data that is missing or corrupt; the message names the file and how to restore it."""


class CheckpointError(Error, RuntimeError):
  """A checkpoint that exists but cannot be used for this config."""


class RunError(Error, RuntimeError):
  """A workdir that holds no usable run."""


class WorkdirBusy(Error, RuntimeError):
  """Another live process holds the workdir's lock."""


class WriteError(Error, RuntimeError):
  """A file of the run could not be written (disk full, I/O error, read-only)."""


class TrainingDiverged(Error, RuntimeError):
  """The loss (or the parameters) became NaN, infinite, or exploded."""


class RunInterrupted(Error, RuntimeError):
  """SIGTERM/SIGINT arrived; a checkpoint was saved and the same command resumes the run."""


class LostProcess(Error, RuntimeError):
  """A process of a multi-host job stopped responding; the same command on every host resumes."""


class ImageError(Error, ValueError):
  """A file that cannot be made into a digit."""


class AggregateError(Error, ValueError):
  """Runs that do not make one experiment's seeds."""


class ResultError(Error, ValueError):
  """A committed result (experiments/results/) that cannot be saved, read or compared with."""
