"""The kernels compile for an H100 (sm_90a) without a GPU, with no spills and 16-byte loads.

The CPU tests run the Triton interpreter, which accepts some code the GPU compiler rejects;
this compiles a representative launch configuration of each kernel with Triton's own
toolchain (kernels/aot.py) in a subprocess without TRITON_INTERPRET.
"""

import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
pytestmark = pytest.mark.skipif(
    not all(os.path.exists(os.path.join(_BIN, t)) for t in ("cuobjdump", "ptxas")),
    reason="this Triton ships no NVIDIA toolchain",
)

# One configuration per kernel at the benchmark shapes (labels from kernels/aot.py).
SUBSET = [
    "rmsnorm fwd H=2048 residual=True",
    "rmsnorm bwd H=960",
    "rmsnorm dweight reduce",
    "swiglu bwd F=8192 fused",
    "rope 15/5x64",
    "ce fwd row pass",
    "ce bwd block",
]


def test_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "grow_megatron.kernels.aot", "--json", "--only", ",".join(SUBSET)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == len(SUBSET), (rows, proc.stderr[-2000:])
    for r in rows:
        assert "error" not in r, r
        assert r["local_bytes"] == 0 and r["stack_bytes"] == 0, r  # nothing spilled to local memory
        assert r["registers"] is not None and r["registers"] <= 255, r
        # the streaming tensors are read 16 bytes a thread at a time
        assert r["ldg_bits"].get("128", 0) >= 1, r
    assert proc.returncode == 0, proc.stderr[-2000:]
