"""The docstring and style linter (ruff, configured in pyproject.toml) passes on the tree."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
    command = [shutil.which("ruff") or sys.executable, "check", "."]
    if command[0] == sys.executable:
        command = [sys.executable, "-m", "ruff", "check", "."]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
