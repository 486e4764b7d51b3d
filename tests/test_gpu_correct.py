"""tools/gpu_correct.py's verdicts, on hand-made inputs (its GPU checks run in the GPU session;
the CPU smoke run of the whole script is tools/gpu_session.sh's GS_SMOKE mode)."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_correct as C  # noqa: E402


def test_losses_agree_within_tolerance_only():
    a = {"0": 10.0, "1": 9.0}
    assert C.losses_agree(a, {"0": 10.1, "1": 9.0}, 2e-2)["ok"]
    r = C.losses_agree(a, {"0": 10.0, "1": 9.5}, 2e-2)
    assert not r["ok"] and r["max_rel_diff"] == pytest.approx(0.5 / 9.5)
    assert not C.losses_agree(a, {"0": 10.0}, 2e-2)["ok"]  # a step missing
    assert not C.losses_agree({"0": float("nan")}, {"0": 10.0}, 2e-2)["ok"]
    assert not C.losses_agree({}, {}, 2e-2)["ok"]


@pytest.mark.parametrize(
    "first,second,ok,verdict",
    [
        ({"0": 1.0, "1": 2.0}, {"2": 3.0, "3": 4.0}, True, "exact"),
        ({"0": 1.0, "1": 2.0}, {"2": 3.0, "3": 4.5}, False, "the resumed steps differ"),
        ({"0": 1.0, "1": 2.1}, {"2": 3.0, "3": 4.5}, None, "the device is not deterministic"),
        ({"0": 1.0, "1": 2.0}, {"2": 3.0}, False, "steps differ"),
    ],
    ids=["exact", "resume-wrong", "nondeterministic", "step-missing"],
)
def test_resume_verdict(first, second, ok, verdict):
    full = {"0": 1.0, "1": 2.0, "2": 3.0, "3": 4.0}
    r = C.resume_verdict(full, first, second, stop_at=2)
    assert r["ok"] is ok and r["verdict"].startswith(verdict)
    assert r["resumed_from"] == 2


def test_junit_summary(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.a" name="t1"/>'
        '<testcase classname="tests.a" name="t2"><failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="tests.b" name="t3"><error message="setup broke">y</error></testcase>'
        '<testcase classname="tests.b" name="t4"><skipped message="no"/></testcase>'
        "</testsuite></testsuites>"
    )
    s = C.junit_summary(str(xml))
    assert (s["tests"], s["passed"], s["skipped"]) == (4, 1, 1)
    assert [(f["test"], f["kind"], f["message"]) for f in s["failed"]] == [
        ("tests.a::t2", "failure", "assert 1 == 2"),
        ("tests.b::t3", "error", "setup broke"),
    ]


def test_summary_counts_failed_and_undecided():
    data = {
        "kernels": [{"kernel": "k", "case": "c", "shape": [1], "ok": True}],
        "sdpa": [{"shape": "s", "ok": False}],
        "engine": [
            {"name": "e", "on_vs_off": {"ok": True}, "resume": {"ok": None}},
            {"name": "f", "error": "RuntimeError: x"},
        ],
        "pytest": {"ok": True},
        "errors": {"interrupted": "stopped"},
    }
    s = C.summary(data)
    assert s["checks"] == 7 and s["passed"] == 3 and not s["ok"]
    assert s["failed"] == ["sdpa native GQA s", "engine f: RuntimeError: x", "part interrupted: stopped"]
    assert s["undecided"] == ["engine e: resume"]
    assert not C.summary({"kernels": [], "sdpa": [], "engine": [], "errors": {}})["ok"]  # nothing checked


def test_refusals(tmp_path, capsys):
    assert C.main(["--out", str(tmp_path / "c.json"), "--parts", "kernels,nope"]) == 2
    assert "unknown nope" in capsys.readouterr().err
    if not C.torch.cuda.is_available():
        assert C.main(["--out", str(tmp_path / "c.json")]) == C.EXIT_NO_GPU
        assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.slow
def test_the_engine_check_runs_and_agrees_on_cpu(tmp_path, one_thread):
    """The engine part of the session's first step, at its smoke sizes: kernels on vs off, one
    growth, a stop and a resume, all through train(). (A record type that changed under it made
    this step fail before any GPU number was taken.)"""
    spec = next(s for s in C.engine_configs(smoke=True) if s["name"] == "tiny")
    # fp32 and 3 steps (growth at step 1 still): the Triton interpreter runs the kernels, about
    # 10 s a run here, and the check makes three runs with them.
    spec["set"].update({"train.precision": "fp32", "train.steps": 3, "growth.grow_steps": 2})
    row = C.check_engine(spec, str(tmp_path), {})
    assert row["growth_steps"] == [1]
    assert [(g["old_depth"], g["new_depth"]) for g in row["kernels_on"]["growths"]] == [(2, 4)]
    assert row["on_vs_off"]["ok"], row["on_vs_off"]
    # CPU is deterministic: the resumed run must equal the uninterrupted one exactly.
    assert row["resume"]["ok"] is True and row["resume"]["verdict"].startswith("exact"), row["resume"]
