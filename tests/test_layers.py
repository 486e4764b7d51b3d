"""The package's layers (.importlinter, docs/architecture.md) hold, and the checks can fail."""

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
    assert "3 kept, 0 broken" in out.stdout


def _planted(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    """The check on a copy of the package with `line` added to `module` (a path under it)."""
    shutil.copytree(
        ROOT / "grow_megatron", tmp_path / "grow_megatron", ignore=shutil.ignore_patterns("__pycache__", "assets")
    )
    path = tmp_path / "grow_megatron" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    return _lint(tmp_path)


def test_an_upward_import_breaks_the_contract(tmp_path):
    # One upward import (config -> training): the check must name it.
    out = _planted(tmp_path, "config/base.py", "from grow_megatron.training import metrics")
    assert out.returncode != 0
    assert "grow_megatron.config.base -> grow_megatron.training.metrics" in out.stdout


def test_checkpoint_storage_importing_run_resolution_breaks_its_contract(tmp_path):
    # engine.checkpoint -> engine.resolve stays inside the engine layer: only the storage
    # contract can name it.
    out = _planted(tmp_path, "engine/checkpoint/directory.py", "from grow_megatron.engine import resolve")
    assert out.returncode != 0
    assert "Checkpoint storage sits below the growth executors and run resolution BROKEN" in out.stdout
    assert "grow_megatron.engine.checkpoint.directory -> grow_megatron.engine.resolve" in out.stdout
