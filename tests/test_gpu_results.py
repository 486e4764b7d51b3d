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
import tarfile

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
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "gpu_results.py"), DATA],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    for heading in (
        "## GPU session steps",
        "## Correct on CUDA (issue 18, step 1)",
        "## Training throughput vs Hugging Face Llama (issue 8)",
        "### Where the time goes, SmolLM-360M shapes",
        "## Kernels (issue 4)",
        "## A short grown training run (train_record)",
        "## Growth-operation latency and memory",
        "## Scale features on one device (tools/bench_scale.py)",
        "## FP8 linears (model.fp8)",
    ):
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


@pytest.mark.parametrize(
    "name,factor,mark",
    [
        ("bench_360m", 1.25, "MISSED"),
        ("bench_360m", 1.35, "MET"),
        ("bench_1p7b", 1.25, "MET"),
        ("bench_1p7b", 1.15, "MISSED"),
    ],
)
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
    ours = {
        (r["kernel"], tuple(r["shape"]), r["mode"]): r["ms"]
        for r in rep["results"]
        if r["provider"] == "ours" and r["mode"] != "check"
    }
    eager = {
        (r["kernel"], tuple(r["shape"]), r["mode"]): r["ms"]
        for r in rep["results"]
        if r["provider"].startswith("eager") and r["mode"] != "check"
    }
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
    log = (
        "=== bench_360m: rc=124 in 230s (stopped at its time limit)\n=== kernels: rc=1 in 12s\n"
        "=== SKIP growth: 30s left, needs 40s\nnoise\n=== train_short: rc=0 in 140s\n"
    )
    steps = G.session_steps(log)
    assert [(s["step"], s["outcome"]) for s in steps] == [
        ("bench_360m", "stopped at its time limit"),
        ("kernels", "failed (exit 1)"),
        ("growth", "skipped: 30s left, needs 40s"),
        ("train_short", "ok"),
    ]
    shutil.copy(os.path.join(DATA, "growth.json"), tmp_path)
    (tmp_path / "session.log").write_text(log)
    md = G.render(str(tmp_path))
    assert (
        "Not returned: correct.json, scale.json, bench_360m.json, kernels.json, bench_1p7b.json, grown_360m.json, "
        "fp8_360m.json, train_short.json"
    ) in md
    rows = _json("growth.json")
    assert re.search(
        rf"\| {rows[0]['preset']} \| {rows[0]['old_depth']} -> {rows[0]['new_depth']} \| "
        rf"kept on device \| {rows[0]['seconds']:.2f} \|",
        md,
    )


def _correct_report(**over) -> dict:
    """A synthetic tools/gpu_correct.py report: one kernel passes, one fails, the SDPA check
    passes, one engine config passes on/off and is undecided on resume, one pytest failure."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import gpu_correct as C

    rep = {
        "environment": {
            "device": "NVIDIA H200",
            "capability": "9.0",
            "torch": "2.11.0",
            "cuda": "13.0",
            "cudnn": 91000,
            "triton": "3.6.0",
            "megatron_core": "0.16.1",
            "date_utc": "2026-12-01",
            "command": "gpu_correct.py --out c.json",
        },
        "smoke": False,
        "errors": {},
        "kernels": [
            {
                "kernel": "rmsnorm",
                "case": "LN-Scaling",
                "shape": [16384, 960],
                "ok": True,
                "seconds": 1.5,
                "errors": {"y": {"ours": 2.5e-3, "torch": 2.4e-3}},
                "failures": [],
            },
            {
                "kernel": "fused_linear_ce",
                "case": "loss per token",
                "shape": [16384, 49152, 2048],
                "ok": False,
                "seconds": 3.0,
                "errors": {"dw": {"ours": 9e-2, "torch": 4e-3}},
                "failures": ["dw: torch.bfloat16 err 0.09 > 2.0 x torch's 0.004"],
            },
        ],
        "sdpa": [
            {
                "shape": "b8 hq15 hkv5 s2048 d64",
                "fused_accepts_native": {"flash": True, "efficient": False, "cudnn": True},
                "engine_takes_native": True,
                "errors": {"out": {"native": 3e-3, "repeat": 3e-3}},
                "fwd_bwd_ms": {"native": 1.234, "repeat": 1.5},
                "ok": True,
                "failures": [],
            }
        ],
        "engine": [
            {
                "name": "360m-shape",
                "shape": "8x2048",
                "growth_steps": [2],
                "kernels_on": {"losses": {"0": 10.8312, "1": 10.5}, "peak_gib": 21.5},
                "kernels_off": {"losses": {"0": 10.8309, "1": 10.51}},
                "on_vs_off": C.losses_agree({"0": 10.8312, "1": 10.5}, {"0": 10.8309, "1": 10.51}, 2e-2),
                "resume": C.resume_verdict({"0": 1.0, "1": 2.0, "2": 3.0}, {"0": 1.0, "1": 2.5}, {"2": 3.0}, 2),
                "nondeterminism_warnings": ["flash attention backward is not deterministic"],
            }
        ],
        "pytest": {
            "files": ["tests/test_kernels_rope.py"],
            "passed": 9,
            "skipped": 0,
            "seconds": 40,
            "timed_out": False,
            "ok": False,
            "failed": [{"test": "tests.test_kernels_rope::test_x", "kind": "failure", "message": "boom"}],
        },
    }
    rep.update(over)
    rep["summary"] = C.summary(rep)
    return rep


def test_correct_section_marks_every_check():
    rep = _correct_report()
    md = "\n".join(G.correct_section(rep))
    s = rep["summary"]
    assert s["checks"] == 6 and s["passed"] == 3 and len(s["failed"]) == 2 and len(s["undecided"]) == 1
    assert "**3 of 6 checks passed: MISSED.**" in md
    assert _row(md, "rmsnorm")[1:5] == ["LN-Scaling", "16384x960", "ok", "y 2.5e-03 / 2.4e-03"]
    assert _row(md, "fused_linear_ce")[3] == "FAILED"
    assert "- fused_linear_ce loss per token: dw: torch.bfloat16 err 0.09" in md
    sd = _row(md, "b8 hq15 hkv5 s2048 d64")
    assert sd[1:3] == ["flash, cudnn", "True"] and sd[4:] == ["1.234 / 1.500", "ok"]
    eng = _row(md, "360m-shape")
    assert eng[3:5] == ["10.8312, 10.5000", "10.8309, 10.5100"]
    assert eng[5].startswith("ok: max rel diff 9.5e-04")
    assert eng[6].startswith("undecided (stop at 2): the device is not deterministic") and eng[7] == "21.50"
    assert "- nondeterministic op (torch's warning): flash attention backward" in md
    assert "9 passed, 1 failed, 0 skipped in 40 s: FAILED." in md and "- tests.test_kernels_rope::test_x" in md
    # All passed: MET.
    good = _correct_report(kernels=rep["kernels"][:1], engine=[], pytest=None)
    assert "**2 of 2 checks passed: MET.**" in "\n".join(G.correct_section(good))


def test_grown_360m_joins_the_360m_bench():
    bench, grown = _json("bench_360m.json"), _json("grown_360m.json")
    bench = {**bench, "errors": {"hf": "OOM"}}
    grown = {**grown, "errors": {"stages": "killed"}}
    merged = G.merge_grown(bench, grown)
    assert merged["static"] == bench["static"] and merged["hf"] == bench["hf"]
    assert merged["schedule"] == grown["schedule"] and merged["stages"] == grown["stages"]
    assert merged["errors"] == {"hf": "OOM", "stages (grown_360m)": "killed"}
    assert G.merge_grown(None, grown) is grown and G.merge_grown(bench, None) is bench
    b = G.bench_rows("bench_360m", merged)
    assert b["measured"] == grown["schedule"]["measured_speedup"] and b["static_tps"] == bench["static"]["tokens_per_s"]


def test_results_missing_as_files_are_read_from_the_tar(tmp_path):
    work = tmp_path / "work"
    (work / "bench_1p7b").mkdir(parents=True)
    shutil.copy(os.path.join(DATA, "bench_1p7b.json"), work / "bench_1p7b" / "report.json")
    shutil.copy(os.path.join(DATA, "train_short.json"), work / "train_short.json")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(os.path.join(DATA, "correct.json"), out)
    with tarfile.open(out / "results.tar.gz", "w:gz") as t:
        t.add(work, arcname=".")  # as gpu_session.sh makes it: tar -C $W .
    md = G.render(str(out))
    assert "## A short grown training run (train_record)" in md and "SmolLM-1.7B shapes" in md
    assert (
        "Read from results.tar.gz: bench_1p7b.json (results.tar.gz:./bench_1p7b/report.json), "
        "train_short.json (results.tar.gz:./train_short.json)"
    ) in md
    assert (
        "Not returned: session.log, scale.json, bench_360m.json, kernels.json, grown_360m.json, growth.json, "
        "fp8_360m.json ("
    ) in md


def test_scale_section_checks_the_losses_and_the_recompute_memory():
    rep = _json("scale.json")
    md = "\n".join(G.scale_section(rep))
    off = next(r for r in rep["rows"] if r["variant"] == "off")
    assert _row(md, "DP=1")[1:3] == ["off", f"{off['kept_after_forward_MiB']:,.0f}"]
    assert "the one without them: ok" in md and "keeps less for backward than none: ok" in md
    bad = copy.deepcopy(rep)
    for r in bad["rows"]:
        if r["variant"] == "recompute full":
            r["loss"] += 1e-6  # recompute that changed the numbers
            r["kept_after_forward_MiB"] = off["kept_after_forward_MiB"]  # and saved nothing
    md = "\n".join(G.scale_section(bad))
    assert "the one without them: FAILED" in md and "keeps less for backward than none: FAILED" in md


def test_fp8_section_sets_fp8_beside_the_bf16_static_engine():
    fp8, bf16 = _json("fp8_360m.json"), _json("bench_360m.json")
    md = "\n".join(G.fp8_section(fp8, bf16))
    want = fp8["static"]["tokens_per_s"] / bf16["static"]["tokens_per_s"]
    assert f"fp8 / bench_360m tokens/s: {want:.2f}" in md
    assert _row(md, "fp8")[1] == f"{fp8['static']['tokens_per_s']:,.0f}"
    assert "model.fp8=rowwise" in md
    assert "fp8 / bench_360m tokens/s: -" in "\n".join(G.fp8_section(fp8, None))
