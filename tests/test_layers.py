"""The package's layers (.importlinter, docs/architecture.md) hold, and the check can fail."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.argv = ['lint-imports', '--config', sys.argv[1], '--no-cache']; lint_imports_command()",
            str(ROOT / ".importlinter"),
        ],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
    )


def test_layers_and_no_cycles():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # The same package with one upward import (config -> training): the check must name it.
    shutil.copytree(
        ROOT / "grow_megatron", tmp_path / "grow_megatron", ignore=shutil.ignore_patterns("__pycache__", "assets")
    )
    base = tmp_path / "grow_megatron" / "config" / "base.py"
    base.write_text(base.read_text() + "\nfrom grow_megatron.training import metrics  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "grow_megatron.config.base -> grow_megatron.training.metrics" in out.stdout
