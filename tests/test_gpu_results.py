"""tools/gpu_results.py on what the GPU session's smoke mode returned (tests/data/gpu_session_smoke:
the CPU run of `GS_SMOKE=1 bash tools/gpu_session.sh`, per-step lists cut): the tables carry
the inputs' numbers, ratios are ratios of the inputs, targets are marked by their thresholds."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "gpu_session_smoke")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_results as G  # noqa: E402


def _json(name):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


def _row(md: str, first_cell: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def test_cli_renders_every_section():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_results.py"), DATA],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    for heading in ("## GPU session steps", "## Training throughput vs Hugging Face Llama (issue 8)",
                    "### Where the time goes, SmolLM-360M shapes", "## Kernels (issue 4)",
                    "## A short grown training run (train_record)", "## Growth-operation latency and memory"):
        assert heading in md, heading
    assert "Smoke mode" in md and "DRY RUN" in md and "Not returned" not in md
    assert _row(md, "bench_1p7b")[1:] == ["ok", "80"]


def test_static_vs_hf_ratio_is_the_ratio_of_the_inputs():
    rep = _json("bench_360m.json")
    b = G.bench_rows("bench_360m", rep)
    assert b["ratio_eager"] == pytest.approx(rep["static"]["tokens_per_s"] / rep["hf"]["eager"]["tokens_per_s"])
    # The dry run has no compiled HF: not measured, not guessed.
    assert b["compile_tps"] is None and b["ratio_compile"] is None and b["ratio_ok"] is None
    md = "\n".join(G.bench_section({"bench_360m": rep}))
    row = _row(md, "SmolLM-360M shapes, 2x32")
    assert row[1] == f"{rep['static']['tokens_per_s']:,.0f}" and row[2] == f"{rep['hf']['eager']['tokens_per_s']:,.0f}"
    assert row[4] == f"{b['ratio_eager']:.2f}x" and "not measured" in row[5]


@pytest.mark.parametrize("name,factor,mark", [("bench_360m", 1.25, "MISSED"), ("bench_360m", 1.35, "MET"),
                                              ("bench_1p7b", 1.25, "MET"), ("bench_1p7b", 1.15, "MISSED")])
def test_hf_compile_target_per_model(name, factor, mark):
    rep = copy.deepcopy(_json(f"{name}.json"))
    tps = rep["static"]["tokens_per_s"]
    rep["hf"]["compile"] = {**rep["hf"]["eager"], "tokens_per_s": tps / factor, "compiled": True}
    b = G.bench_rows(name, rep)
    assert b["ratio_compile"] == pytest.approx(factor)
    md = "\n".join(G.bench_section({name: rep}))
    assert f"{factor:.2f}x (target {G.HF_RATIO_TARGET[name]}x: {mark})" in md


def test_grown_vs_static_and_growth_share():
    rep = _json("bench_360m.json")
    sch = rep["schedule"]
    b = G.bench_rows("bench_360m", rep)
    assert b["measured"] == sch["measured_speedup"] and b["predicted"] == sch["predicted_speedup"]
    assert b["efficiency_ok"] == (sch["efficiency"] >= 0.95)
    steps = rep["settings"]["growth"]["config_steps"]
    g, t = sch["growth_s"], sch["grown"]["train_s"]
    assert b["growth_share_projected"] == pytest.approx(g / (g + t * steps / sch["total_steps"]))
    # Fewer config steps -> a larger projected share; past 5% the target is missed.
    rep2 = copy.deepcopy(rep)
    rep2["settings"]["growth"]["config_steps"] = sch["total_steps"]
    b2 = G.bench_rows("bench_360m", rep2)
    assert b2["growth_share_projected"] == pytest.approx(sch["growth_fraction_of_grown_wall"], rel=0.05)
    assert b2["growth_share_ok"] is (b2["growth_share_projected"] < 0.05)


def test_kernel_rows_speedups_and_targets():
    rep = _json("kernels.json")
    rows = G.kernel_rows(rep)
    ours = {(r["kernel"], tuple(r["shape"]), r["mode"]): r["ms"] for r in rep["results"] if r["provider"] == "ours"
            and r["mode"] != "check"}
    eager = {(r["kernel"], tuple(r["shape"]), r["mode"]): r["ms"] for r in rep["results"]
             if r["provider"].startswith("eager") and r["mode"] != "check"}
    assert {(g["kernel"], tuple(g["shape"]), g["mode"]) for g in rows} == set(ours)
    for g in rows:
        key = (g["kernel"], tuple(g["shape"]), g["mode"])
        assert g["speedup"]["eager"] == pytest.approx(eager[key] / ours[key])
    md = "\n".join(G.kernels_section(rep))
    # Every target of the file appears with its status; in a dry run none is measured.
    for t in rep["targets"]:
        assert f"| {t['target']} |" in md
    assert md.count("| not measured |") == len(rep["targets"])
    # A measured target keeps its verdict.
    rep2 = copy.deepcopy(rep)
    rep2["targets"][0].update(value=91.0, ok=True)
    rep2["targets"][1].update(value=[0.5, 0.6], ok=False)
    md2 = "\n".join(G.kernels_section(rep2))
    assert f"| {rep2['targets'][0]['target']} | 91 | MET |" in md2
    assert f"| {rep2['targets'][1]['target']} | 0.5 vs 0.6 | MISSED |" in md2


def test_train_short_growths_before_after():
    rec = _json("train_short.json")
    tr = G.growth_transitions(rec)
    assert [(t["old_depth"], t["new_depth"]) for t in tr] == [(g["old_depth"], g["new_depth"]) for g in rec["growths"]]
    med = {s["depth"]: s["tokens_per_s_median"] for s in rec["stages"]}
    for t in tr:
        assert t["tps_before"] == med[t["old_depth"]] and t["tps_after"] == med[t["new_depth"]]
        assert t["ratio"] == pytest.approx(med[t["new_depth"]] / med[t["old_depth"]])
    md = "\n".join(G.train_section(rec))
    assert "did not complete" not in md
    assert "did not complete" in "\n".join(G.train_section({**rec, "completed": False}))


def test_session_log_outcomes_and_missing_files(tmp_path):
    log = ("=== bench_360m: rc=124 in 230s (stopped at its time limit)\n=== kernels: rc=1 in 12s\n"
           "=== SKIP growth: 30s left, needs 40s\nnoise\n=== train_short: rc=0 in 140s\n")
    steps = G.session_steps(log)
    assert [(s["step"], s["outcome"]) for s in steps] == [
        ("bench_360m", "stopped at its time limit"), ("kernels", "failed (exit 1)"),
        ("growth", "skipped: 30s left, needs 40s"), ("train_short", "ok")]
    shutil.copy(os.path.join(DATA, "growth.json"), tmp_path)
    (tmp_path / "session.log").write_text(log)
    md = G.render(str(tmp_path))
    assert "Not returned: bench_360m.json, bench_1p7b.json, kernels.json, train_short.json" in md
    rows = _json("growth.json")
    assert re.search(rf"\| {rows[0]['preset']} \| {rows[0]['old_depth']} -> {rows[0]['new_depth']} \| "
                     rf"kept on device \| {rows[0]['seconds']:.2f} \|", md)
