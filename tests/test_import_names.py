"""Nothing of ours is importable under a top-level name that a dependency owns (issue 22).

`python -m pytest`, `python -c` and a notebook started in the repository put the repository root
first on sys.path, where our `kernels/` folder would shadow Hugging Face's `kernels` package, which
transformers imports. Each check runs a fresh interpreter with the repository root as its working
directory and `-c`, which is exactly the sys.path that `python -m pytest` gets.
"""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code, *flags):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _top_level_names():
    """Names under which something in the repository root could be imported from there."""
    names = set()
    for entry in ROOT.iterdir():
        name = entry.stem if entry.suffix == ".py" else entry.name
        if entry.name.startswith(".") or not name.isidentifier():
            continue
        if entry.is_dir() or entry.suffix == ".py":
            names.add(name)
    return sorted(names)


def test_names_owned_by_installed_distributions_resolve_to_them():
    owners = importlib.metadata.packages_distributions()
    ours = {"grow_megatron"}
    owned = [n for n in _top_level_names() if n in owners and n not in ours]
    code = (
        "import importlib, json, sys\n"
        "out = {}\n"
        f"for name in {owned!r}:\n"
        "    m = importlib.import_module(name)\n"
        "    out[name] = [getattr(m, '__file__', None) or '', *list(getattr(m, '__path__', []))]\n"
        "print(json.dumps(out))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, paths in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        for p in paths:
            assert p and not Path(p).resolve().is_relative_to(ROOT), f"`import {name}` from the repo root gave {p}"


@pytest.mark.skipif(importlib.util.find_spec("kernels") is None, reason="Hugging Face's kernels is not installed")
def test_import_kernels_from_repo_root_is_hugging_faces():
    dist_files = importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py")
    proc = _run("import kernels; print(kernels.__file__); from kernels import CUDAProperties")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.split()[-1]).resolve() == Path(dist_files).resolve()
    sub = _run("import kernels.rmsnorm")
    assert sub.returncode != 0 and "No module named 'kernels.rmsnorm'" in sub.stderr


def test_without_hugging_faces_kernels_the_name_is_not_ours():
    # -S: no site-packages, so no other `kernels` exists; the repository root is still sys.path[0].
    proc = _run("import sys; sys.path.insert(0, ''); import kernels", "-S")
    assert proc.returncode != 0
    assert "ModuleNotFoundError: No module named 'kernels'" in proc.stderr, proc.stderr[-2000:]


def test_our_kernels_import_as_grow_megatron_kernels_from_repo_root():
    proc = _run("import grow_megatron.kernels as k; print(k.__name__, callable(k.rms_norm))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["grow_megatron.kernels", "True"]


def test_transformers_builds_and_runs_a_model_from_repo_root():
    code = (
        "import torch\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "m = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,\n"
        "                                 num_attention_heads=2, vocab_size=64))\n"
        "out = m(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]))\n"
        "print(tuple(out.logits.shape), bool(torch.isfinite(out.loss)))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1, 3, 64) True"
