"""What the GPU session and a minimal install import does not need the optional packages.

The lent GPU machine's image has torch, triton, transformers and tokenizers but no `datasets`,
`wandb`, `lm_eval` or `evaluate` (its package list: the device tool's KINDS.md), and nothing can
be installed there beyond the carried wheels (tools/gpu_wheels.sh: megatron-core, liger-kernel,
torchao). In a fresh interpreter where importing those four fails, every module the session's
steps run must import, and a run's data path over JSON Lines must not reach for them."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSENT = ("datasets", "wandb", "lm_eval", "evaluate")

BLOCKER = f"""
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent from the GPU image)")
sys.meta_path.insert(0, _Absent())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_gpu_sessions_modules_import_without_the_optional_packages():
    # The list tools/gpu_session.sh checks before its first step, and the tools it runs.
    r = _run(
        """
        import sys
        sys.path.insert(0, "tools")
        import megatron.core, grow_megatron.kernels, grow_megatron.kernels.bench
        import grow_megatron.cli.bench, grow_megatron.cli.bench_growth, grow_megatron.cli.train_record
        import grow_megatron.training.loop, grow_megatron.model.modules, grow_megatron.data.datasets
        import gpu_correct, bench_kernels, bench_scale
        print("imported")
        """
    )
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-3000:]


def test_the_blocker_blocks():
    """The check above means something only if the blocked packages really fail to import."""
    r = _run("import datasets")
    assert r.returncode != 0 and "absent from the GPU image" in r.stderr
