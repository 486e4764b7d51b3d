"""The small commands: `grow-megatron plan` and the growth benchmark."""

import json
import os

from grow_megatron.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_prints_the_paper_schedule(capsys):
    assert main(["plan", os.path.join(ROOT, "examples", "smollm360m_lidas.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # docs/method.md §4: PROP-1, k = 8, T = 170000; the last stage also runs the 30k cooldown.
    assert [s["steps"] for s in plan["stages"]] == [4722, 9444, 14167, 18889, 23611, 28333, 33056, 37778 + 30000]
    assert [s["depth"] for s in plan["stages"]] == list(range(4, 33, 4))
    assert plan["growths"][1]["source_map"] == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]  # LIDAS 8 -> 12
    assert plan["growths"][0]["step"] == 4722


def test_plan_table(capsys):
    assert main(["plan", os.path.join(ROOT, "examples", "tiny_lidas.yaml")]) == 0
    out = capsys.readouterr().out
    assert "growth at step 21: 4 -> 8" in out and "growth at step 64: 8 -> 12" in out


def test_growth_benchmark_writes_its_record(tmp_path):
    from grow_megatron.cli.bench_growth import main as bench_main

    out = tmp_path / "growth.json"
    assert bench_main(["--preset", "tiny", "--depth", "4", "--seq", "16", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert (row["old_depth"], row["new_depth"], row["device"]) == (4, 8, "cpu")
    assert row["seconds"] > 0 and row["mem_peak_gib"] >= row["mem_before_gib"] > 0
