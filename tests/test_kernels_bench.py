"""tools/bench_kernels.py: the CPU dry run goes through every benchmark path and writes sane JSON."""

import json
import math

import pytest
import torch

from grow_megatron.kernels import triton_available
from grow_megatron.kernels.bench import EXIT_NO_GPU, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_refuses_without_gpu(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["--out", str(out)]) == EXIT_NO_GPU == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(
    not triton_available("cpu") and not torch.cuda.is_available(), reason="needs CUDA or TRITON_INTERPRET=1"
)
def test_dry_run_writes_well_formed_json(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["--dry-run", "--tune", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in ("device", "dry_run", "torch", "triton", "copy_gbps", "results", "targets", "notes"):
        assert key in report, key
    assert report["dry_run"] is True and report["copy_gbps"] > 0
    rows = report["results"]
    kernels = {"rmsnorm", "swiglu", "rope", "fused_linear_ce"}
    assert {r["kernel"] for r in rows} == kernels | {"rmsnorm tune"}
    for kernel in kernels:
        for provider in ("ours", "eager"):
            modes = {r["mode"] for r in rows if r["kernel"] == kernel and r["provider"].startswith(provider)}
            assert {"fwd", "fwd+bwd"} <= modes, (kernel, provider, modes)
    for r in rows:
        if r["mode"] == "check":
            # bf16 ours vs bf16 eager at the same shape: agree to bf16 rounding
            assert all(e < 2e-2 for e in r["rel_err"].values()), r
        else:
            assert r["ms"] is not None and math.isfinite(r["ms"]) and r["ms"] > 0, r
            assert not r["note"].startswith("failed"), r
    # dry-run shapes are not the targets' shapes: nothing may claim a target met
    assert report["targets"] and all(t["ok"] is None for t in report["targets"])
    assert "wrote" in capsys.readouterr().out
