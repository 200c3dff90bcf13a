"""tests/mutation.py, the mutation runner of `./run.sh mutants`: what it mutates, and that the
equivalent mutants docs/testing.md lists are mutants it makes."""

import dataclasses
import re

import mutation


def test_every_listed_equivalent_mutant_is_one_the_runner_makes():
  keys = {mutation.key(dataclasses.asdict(m)) for module in mutation.TARGETS
          for m, _ in mutation.mutants(module)}
  listed = mutation.equivalent()
  assert listed and [k for k in listed if k not in keys] == []


def test_mutants_change_logic_and_leave_messages_and_logs_alone():
  changes = [m.change for m, _ in mutation.mutants("mnist_jax.checkpoints")]
  assert "epoch < since -> epoch <= since" in changes
  assert "self.wait() -> pass" in changes
  assert not [c for c in changes if c.startswith(("log.", "f'", 'f"'))
              or re.fullmatch(r"""(['"])[^'"]*\1 -> (['"])[^'"]*\2""", c)]
  assert not [c for c in changes if "_silence_orbax_failure_reports" in c]  # EXCLUDED's call
