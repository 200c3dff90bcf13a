"""The code follows one style: ruff, configured in pyproject.toml, finds nothing."""
import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
  result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format=concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
