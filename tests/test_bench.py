"""`grow-megatron bench`: the CPU dry run writes a well-formed report; without a GPU it refuses.

The dry run goes through the same code as a GPU run (engine static / per stage / scaled grown
vs static, HF baseline, report writers) with tiny shapes, so this is the CI check of the GPU
benchmark's plumbing. It runs in a subprocess: the benchmark initialises a process group and
megatron's parallel state, which must not leak into other tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from grow_megatron.bench.config import BenchConfig, peak_flops_for
from grow_megatron.bench.runner import resolve
from grow_megatron.config.model import ModelConfig
from grow_megatron.growth import flops as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "examples", "tiny_lidas.yaml")


# An in-process training test earlier in the session leaves its world-of-one rendezvous in the
# environment (init_distributed sets MASTER_PORT and binds it); a child that inherited it
# would try to bind the same port. The benchmark starts its own world.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _child_env(**extra) -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in DIST_ENV}, **extra}


def _bench(args: list[str], **env) -> subprocess.CompletedProcess:
    e = _child_env(OMP_NUM_THREADS="2", **env)
    return subprocess.run(
        [sys.executable, "-m", "grow_megatron.cli", "bench", *args],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=170,
    )


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


THROUGHPUT_KEYS = (
    "tokens_per_s",
    "tflops",
    "tflops_causal",
    "mfu",
    "mfu_causal",
    "step_s_median",
    "peak_memory_gib",
    "flops_per_token",
    "flops_per_token_causal",
)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # --peak-tflops: on CPU there is no device peak; an explicit one exercises the MFU columns.
    proc = _bench([TINY, "--dry-run", "--out", str(out), "--peak-tflops", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "report.json") as f:
        return out, json.load(f), proc.stdout


def test_report_sections(dry_run):
    out, rep, stdout = dry_run
    assert rep["errors"] == {}
    assert rep["settings"]["dry_run"] is True
    for section in ("environment", "settings", "static", "stages", "schedule", "hf"):
        assert rep.get(section), section
    env = rep["environment"]
    for key in ("torch", "transformers", "megatron_core", "python", "date_utc", "command", "device"):
        assert env.get(key), key
    assert "--dry-run" in env["command"]
    for r in [rep["static"], *rep["stages"], rep["hf"]["eager"]]:
        for key in THROUGHPUT_KEYS:
            assert _finite_positive(r[key]), (key, r[key])
    # The dry run never compiles; the compiled HF variant is a GPU-only measurement.
    assert "compile" not in rep["hf"] and rep["hf"]["eager"]["compiled"] is False
    assert _finite_positive(rep["static_vs_hf"]["eager"])
    assert "| grow-megatron static |" in stdout and "measured wall clock" in stdout
    assert (out / "report.md").read_text().startswith("# grow-megatron bench")
    png = (out / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_stages_follow_the_plan(dry_run):
    _, rep, _ = dry_run
    stages = rep["stages"]
    assert [r["depth"] for r in stages] == [4, 8, 12]  # tiny_lidas: block 4 up to 12 layers
    assert stages[0]["grow_s"] is None and all(_finite_positive(r["grow_s"]) for r in stages[1:])
    assert rep["static"]["depth"] == 12
    # Same model at the final depth: the same FLOPs per token as the static measurement.
    assert stages[-1]["flops_per_token"] == rep["static"]["flops_per_token"]
    assert stages[0]["flops_per_token"] < stages[1]["flops_per_token"] < stages[2]["flops_per_token"]


def test_schedule_flops_add_up_and_speedups(dry_run):
    _, rep, _ = dry_run
    s, shape = rep["schedule"], ModelConfig(**rep["settings"]["shape"])
    total, tps = s["total_steps"], s["tokens_per_step"]
    assert sum(s["stage_steps"][:-1]) == s["boundaries"][-1] and len(s["grown"]["steps"]) == total
    # Per-stage FLOPs add up to the run total, and both equal flops.py on the same scaled schedule.
    g = s["flops"]["grown"]
    assert sum(st["flops"] for st in g["stages"]) == g["flops"]
    assert sum(st["flops"] for st in s["grown_stages"]) == g["flops"]
    plan = F.prop_plan(shape.num_layers, rep["settings"]["growth"]["block_size"], s["grow_steps"])
    ref = F.compare(shape, plan, total, tps)
    assert g["flops"] == ref.grown.flops and s["flops"]["static"]["flops"] == ref.static.flops
    assert s["predicted_speedup"] == pytest.approx(ref.ratio)
    assert ref.ratio > 1
    # Proportions kept: growth over grow_steps of the config's steps, scaled.
    gs = rep["settings"]["growth"]
    assert s["grow_steps"] == max(3, round(total * gs["config_grow_steps"] / gs["config_steps"]))
    for key in (
        "measured_speedup",
        "measured_speedup_train_only",
        "efficiency",
        "growth_s",
        "grown_tflops",
        "static_tflops",
    ):
        assert _finite_positive(s[key]), key
    assert s["measured_speedup"] == pytest.approx(s["static"]["wall_s"] / s["grown"]["wall_s"])
    assert [e["new_depth"] for e in s["grown"]["growths"]] == [8, 12]
    assert [e["step"] for e in s["grown"]["growths"]] == s["boundaries"]
    assert all(math.isfinite(r["loss"]) for r in s["grown"]["steps"] + s["static"]["steps"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_gpu(tmp_path):
    proc = _bench([TINY, "--out", str(tmp_path)])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--dry-run" in lines[0]
    assert not (tmp_path / "report.json").exists()


def test_resolve_scaled_schedule_and_peaks():
    """The PROP proportions of a paper config survive the compression (no engine needed)."""
    bc, s = resolve(BenchConfig(config=os.path.join(ROOT, "examples", "smollm360m_lidas.yaml"), total_steps=200))
    assert s.shape.num_layers == 32 and s.batch == 8 and s.seq == 2048 and s.vocab == 49152
    assert s.scaled_grow_steps == 170  # 200 * 170k / 200k
    assert s.scaled_plan.stage_steps[:-1] == F.prop_plan(32, 4, 170).stage_steps[:-1]
    assert s.depths == list(range(4, 33, 4))
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == F.H100_SXM_BF16_PEAK
    assert peak_flops_for("Intel Xeon") is None


def test_torchrun_two_pipeline_stages(tmp_path):
    """Multi-rank: 2 pipeline ranks x 2 virtual stages under torchrun (gloo), rank 0 writes the report."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "grow_megatron.cli",
            "bench",
            TINY,
            "--dry-run",
            "--out",
            str(tmp_path),
            "--set",
            "parallel.pipeline_parallel=2",
            "--set",
            "parallel.virtual_stages=2",
            "--set",
            "model.num_layers=8",
            "--set",
            "train.micro_batch_size=8",
            "--microbatches",
            "2",
            "--parts",
            "static,schedule,hf",
        ],
        cwd=ROOT,
        env=_child_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["errors"] == {} and rep["environment"]["world_size"] == 2 and rep["environment"]["pp"] == 2
    assert rep["environment"]["vpp"] == 2
    assert _finite_positive(rep["static"]["tokens_per_s"]) and _finite_positive(rep["schedule"]["measured_speedup"])
    assert "hf" not in rep and any("single-process" in n for n in rep["notes"])
