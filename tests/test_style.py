"""Lint and format (ruff.toml): `ruff check` and `ruff format --check` over the package, the
kernels, the tools and the tests, as the developer runs them (README, "Tests")."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("grow_megatron", "kernels", "tools", "tests")


@pytest.mark.parametrize(
    "args",
    [("check", "--output-format", "concise"), ("format", "--check", "--output-format", "concise")],
    ids=["lint", "format"],
)
def test_ruff(args):
    # ruff comes with the test extras (setup.py); a missing ruff is a broken environment, not a pass.
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (
        f"`ruff {' '.join(args)}` found problems (fix them, or run `ruff check --fix` / "
        f"`ruff format` on the files you changed):\n{proc.stdout}{proc.stderr}"
    )
