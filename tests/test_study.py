"""`grow-megatron study`: a micro study end to end, its resumability, and bad study files.

The end-to-end run trains two variants of a 4-layer micro model for a few steps, exports,
evaluates and analyses them (depth score and tuned lens, the analyses the table reads) and
loops the grown one, all through the real commands as subprocesses. It is run once (module
fixture) in three invocations: interrupted by the test hook right after the grown variant's
analyze command (before its marker), resumed, and run again with nothing left to do.
"""

import copy
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from grow_megatron.config.base import ConfigError
from grow_megatron.engine.faults import ENV
from grow_megatron.study.config import load_study
from grow_megatron.study.layout import Step, StudyLayout, plan
from grow_megatron.study.report import late_overlap
from grow_megatron.study.runner import StudyInterrupted, run_study

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "examples" / "study_micro.yaml"


def _micro(tmp: Path, **changes) -> Path:
    raw = yaml.safe_load(MICRO.read_text())
    raw["out_dir"] = str(tmp / "out")
    raw.update(changes)
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    # The table's analyses only (depth score, tuned lens) and fewer steps: the full set runs in
    # examples/study_micro.yaml; here every subprocess counts.
    raw = yaml.safe_load(MICRO.read_text())
    analysis = dict(
        raw["analysis"],
        analyses=["depth-score", "tuned-lens"],
        set=[s for s in raw["analysis"]["set"] if s.split(".")[0] in ("depth-score", "tuned-lens")],
    )
    path = _micro(tmp, analysis=analysis)
    cfg, base = load_study(str(path))
    log = open(tmp / "study.log", "w")
    os.environ[ENV] = "study.step@analyze:lidas:0:stop"
    try:
        with pytest.raises(StudyInterrupted):
            run_study(cfg, base, out=log)
    finally:
        del os.environ[ENV]
    layout = StudyLayout(cfg.out_dir)
    interrupted = {
        "analyze_json": os.path.isfile(os.path.join(layout.analysis_dir("lidas", 0), "depth_score.json")),
        "analyze_marker": os.path.isfile(layout.marker(Step("analyze", "lidas", 0))),
        "report": os.path.isfile(os.path.join(cfg.out_dir, "report.md")),
    }
    resumed = run_study(cfg, base, out=log)
    again = run_study(cfg, base, out=log)
    return {"cfg": cfg, "layout": layout, "interrupted": interrupted, "resumed": resumed, "again": again}


def test_resume_reruns_only_the_interrupted_step(study):
    cfg = study["cfg"]
    # The hook stopped the study after the command ran and before its marker: outputs, no marker.
    assert study["interrupted"] == {"analyze_json": True, "analyze_marker": False, "report": False}
    steps = plan(cfg)
    k = steps.index(Step("analyze", "lidas", 0))
    # The resumed run redoes the interrupted step and runs the ones never reached; nothing before it.
    assert study["resumed"].ran == steps[k:]
    assert study["resumed"].skipped == steps[:k]
    # A second run re-runs nothing (and rewrites the report from the same files).
    assert study["again"].ran == []
    assert study["again"].skipped == steps
    assert study["again"].report and os.path.isfile(study["again"].report)


def _table(report: str) -> dict[str, list[str]]:
    lines = report.split("## Summary", 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| variant |"))
    rows = {}
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _num(cell: str) -> float:
    return float(cell.split("±")[0])


def _close(cell: str, value: float, fmt: str) -> bool:
    """The cell shows `value` in format `fmt` (the report prints rounded numbers)."""
    return cell.split("±")[0].strip() == fmt.format(value)


def test_report_table_equals_the_per_variant_json(study):
    cfg, layout = study["cfg"], study["layout"]
    report = Path(cfg.out_dir, "report.md").read_text()
    rows = _table(report)
    held = os.path.join(cfg.out_dir, "heldout.jsonl")
    for v in ("static", "lidas"):
        cells = rows[v]
        ev = json.loads(Path(layout.eval_json(v, 0)).read_text())
        tr = json.loads(Path(layout.train_json(v, 0)).read_text())
        ds = json.loads(Path(layout.analysis_dir(v, 0), "depth_score.json").read_text())["models"][v]
        tl = json.loads(Path(layout.analysis_dir(v, 0), "tuned_lens.json").read_text())["models"][v]
        h = ev["heldout"][held]
        assert cells[0] == f"{h['nll']:.4f} ± {h['stderr']:.4f}"
        m = ev["primitives_mean"]
        assert cells[1] == f"{m['accuracy']:.3f} ± {m['stderr']:.3f}"
        assert cells[2] == f"{ds['depth_score']:.3f} ± {ds['depth_score_se']:.3f}"
        ov = tl["top_k_overlap"]
        assert cells[3] == f"{sum(ov[2:3]) / 1:.3f}"  # 4 layers: layers [2, 3)
        assert _close(cells[3], late_overlap(tl), "{:.3f}")
        assert cells[4] == f"{tr['flops']:.4e}"
        assert cells[5] == f"{tr['train_step_seconds']:.1f}"
        # train.json's totals are the run's last metrics record.
        recs = [json.loads(ln) for ln in Path(layout.run_dir(v, 0), "metrics.jsonl").read_text().splitlines() if ln]
        last = max((r for r in recs if "loss" in r), key=lambda r: r["step"])
        assert (tr["flops"], tr["tokens"], tr["steps"]) == (last["flops"], last["tokens"], 8)
    # Grown runs train fewer FLOPs for the same tokens (docs/method.md §6).
    assert _num(rows["lidas"][4]) < _num(rows["static"][4])
    # The looped row is the best R > 1 row of the loop sweep of the variant the marker names.
    sweep = json.loads(Path(layout.loop_dir(0), "loop_sweep.json").read_text())
    best = max((r for r in sweep["rows"] if r["repeats"] > 1), key=lambda r: (r["accuracy"], -r["mean_nll"]))
    looped = [k for k in rows if "looped" in k]
    assert looped == [f"lidas looped {best['loop']} (seed 0)"]
    assert rows[looped[0]][:2] == [f"{best['mean_nll']:.4f}", f"{best['accuracy']:.3f}"]
    # Figures of both models on shared axes, with captions; the comparison of training runs.
    for fig in ("figures/depth-score.png", "figures/tuned-lens.png", "compare_runs/compare_runs.png"):
        assert f"]({fig})" in report and Path(cfg.out_dir, fig).is_file()
    assert "The paper (Fig. 1A)" in report
    # One seed: differences are judged against the standard errors.
    assert re.search(r"depth score, static vs lidas: .*(within noise|beyond noise)", report)


def test_several_seeds_give_mean_and_spread(tmp_path):
    # Cells of two seeds: mean ± sample SD; a difference under the spread is said to be one.
    from grow_megatron.study.report import Cell, _cell, _verdict

    a = _cell([(1.0, 0.1), (3.0, 0.1)])
    assert (a.value, a.kind, a.seeds) == (2.0, "sd", 2) and math.isclose(a.spread, math.sqrt(2))
    b = _cell([(2.5, 0.1), (2.7, 0.1)])
    assert "smaller than the seed spread" in _verdict("x", a, b, "{:.3f}")
    c = Cell(9.0, 0.1, "sd", 2)
    assert "larger than the seed spread" in _verdict("x", Cell(1.0, 0.1, "sd", 2), c, "{:.3f}")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"seeds": [0, 0]}, "seeds"),
        ({"phases": ["train", "plot"]}, "phases[1]"),
        (
            {
                "variants": [
                    {"name": "static", "set": ["growth.operator=none"]},
                    {"name": "bad", "set": ["growth.operator=sideways"]},
                ]
            },
            "variants[1] (bad): growth.operator",
        ),
        (
            {
                "variants": [
                    {"name": "static", "set": ["growth.operator=none"]},
                    {"name": "long", "set": ["growth.operator=lidas", "train.steps=16"]},
                ]
            },
            "variants[1].set",
        ),
        ({"variants": [{"name": "a/b", "set": []}]}, "variants[0].name"),
        ({"trian": 1}, "trian"),
        ({"loop": {"of": "nonesuch"}}, "loop.of"),
        ({"launcher": "no-such-launcher --nproc-per-node 2"}, "launcher"),
        ({"analysis": {"analyses": ["depth-score", "x-ray"]}}, "analysis.analyses[1]"),
    ],
)
def test_a_bad_study_value_is_one_line_naming_the_field(tmp_path, capsys, change, field):
    path = _micro(tmp_path, **copy.deepcopy(change))
    with pytest.raises(ConfigError) as err:
        load_study(str(path))
    assert str(err.value).startswith(field), str(err.value)
    # Through the command: one line on stderr, exit code 2, nothing written.
    from grow_megatron.cli import main

    assert main(["study", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"grow-megatron study: {field}")
    assert not (tmp_path / "out" / "variants").exists()


@pytest.mark.parametrize("name", ["study_micro", "study_cpu", "study_h200", "study_smollm360m", "study_smollm1.7b"])
def test_example_studies_validate(tmp_path, name):
    path = ROOT / "examples" / f"{name}.yaml"
    sets = [f"out_dir={tmp_path / 'out'}"]
    if "smollm" in name:  # the cluster studies name a held-out file to fill in, and launch torchrun
        if shutil.which("torchrun") is None:
            pytest.skip("torchrun is not on PATH here (the launcher check needs it)")
        held = tmp_path / "heldout.jsonl"
        held.write_text('{"text": "held out"}\n')
        sets.append(f"heldout={held}")
    cfg, base = load_study(str(path), sets)
    assert os.path.isfile(base)
    # Every variant of one study trains the same tokens (load_study refuses otherwise); the
    # cluster studies are checked at the launcher's 8 ranks.
    assert cfg.world_size() == (8 if "smollm" in name else 1)
    assert len({cfg.run_config(base, v, 0, str(tmp_path / "r")).train.steps for v in cfg.variants}) == 1
