"""Runs side by side at equal compute, the library of `grow-megatron compare-runs` (whose help
says what the comparison shows): each run's records read from its metrics.jsonl, losses
interpolated at common FLOP budgets, and `write_comparison`, which writes
DIR/compare_runs.png, DIR/loss_at_flops.md and DIR/loss_at_flops.json."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from grow_megatron.config.base import ConfigError
from grow_megatron.config.rundir import METRICS, GrowthEvent, RunDir
from grow_megatron.growth.flops import flops_unit, format_flops

AXES = (("step", "step"), ("tokens", "tokens trained"), ("flops", "training FLOPs (paper count)"))


@dataclass
class RunRecords:
    """One run's logged records, as compare-runs needs them."""

    name: str
    records: list[dict]
    """metrics.jsonl records by increasing step, each with step, loss, tokens, flops (val_loss
    where evaluated)."""
    growths: list[GrowthEvent] = field(default_factory=list)
    """Growth events (events.jsonl), each with step, old_depth, new_depth."""

    def column(self, key: str, where: str | None = None) -> np.ndarray:
        return np.array([r[key] for r in self.records if where is None or where in r], dtype=np.float64)

    def at_growth(self, event: GrowthEvent, axis: str) -> float:
        """Position of a growth (before step event.step) on `axis`: the count after that many steps."""
        if axis == "step":
            return float(event.step)
        steps = self.column("step") + 1  # a record's counts are after its step
        return float(np.interp(event.step, np.concatenate([[0], steps]), np.concatenate([[0], self.column(axis)])))


def load_run(run_dir: str, name: str | None = None) -> RunRecords:
    """A run directory's records; ConfigError (one line) when it cannot be compared."""
    rd = RunDir(run_dir)
    if not os.path.isfile(rd.metrics):
        raise ConfigError("RUN", run_dir, f"has no {METRICS}: give a run directory (the run_dir of a training run)")
    recs = sorted((r for r in rd.read_metrics() if "step" in r and "loss" in r), key=lambda r: r["step"])
    if not recs:
        raise ConfigError("RUN", run_dir, f"has no training records in {METRICS} yet")
    if any("flops" not in r or "tokens" not in r for r in recs):
        raise ConfigError(
            "RUN",
            run_dir,
            "has records without cumulative tokens/FLOPs (trained by a version of "
            "grow_megatron before they were logged): train it again to compare it",
        )
    return RunRecords(name or os.path.basename(os.path.normpath(run_dir)), recs, rd.growth_events())


def default_budgets(runs: Sequence[RunRecords], n: int) -> list[float]:
    """n evenly spaced FLOP budgets up to the smallest run's total: every run reaches each."""
    common = min(r.records[-1]["flops"] for r in runs)
    return [common * k / n for k in range(1, n + 1)]


def loss_at(run: RunRecords, budget: float, key: str) -> float | None:
    """`key` (loss or val_loss) of `run` linearly interpolated at `budget` FLOPs; None outside
    the logged range of that key."""
    x, y = run.column("flops", key), run.column(key, key)
    if len(x) == 0 or budget < x[0] or budget > x[-1]:
        return None
    return float(np.interp(budget, x, y))


def loss_table(runs: Sequence[RunRecords], budgets: Sequence[float]) -> list[dict]:
    """One row per budget: {"flops", run name: {"loss", "val_loss"}}."""
    return [
        {"flops": b, **{r.name: {"loss": loss_at(r, b, "loss"), "val_loss": loss_at(r, b, "val_loss")} for r in runs}}
        for b in budgets
    ]


def format_markdown(runs: Sequence[RunRecords], rows: list[dict]) -> str:
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    unit = flops_unit(max(row["flops"] for row in rows))
    head = ["FLOPs"] + [f"{r.name} {what}" for r in runs for what in ("train", "held-out")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [format_flops(row["flops"], unit)] + [fmt(row[r.name][k]) for r in runs for k in ("loss", "val_loss")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: Sequence[RunRecords], out: str) -> str:
    """Three panels, loss against steps / tokens / FLOPs; growths as dotted lines in the run's colour."""
    # matplotlib: pyplot's backend has to be chosen before pyplot is imported, and only plots need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    losses = np.concatenate([r.column("loss") for r in runs] + [r.column("val_loss", "val_loss") for r in runs])
    # The FLOPs axis in a named unit (GFLOP, PFLOP...), not matplotlib's bare 1e10 offset.
    unit = flops_unit(max(r.records[-1]["flops"] for r in runs))
    scale = {"step": 1, "tokens": 1, "flops": unit[1]}
    for i, run in enumerate(runs):
        c = colors[i % len(colors)]
        for ax, (key, _) in zip(axes, AXES):
            ax.plot(
                run.column(key) / scale[key], run.column("loss"), color=c, lw=1, alpha=0.55, label=f"{run.name} train"
            )
            if "val_loss" in {k for r in run.records for k in r}:
                ax.plot(
                    run.column(key, "val_loss") / scale[key],
                    run.column("val_loss", "val_loss"),
                    "o-",
                    color=c,
                    ms=4,
                    lw=1.8,
                    label=f"{run.name} held-out",
                )
            for g in run.growths:
                ax.axvline(run.at_growth(g, key) / scale[key], color=c, ls=":", lw=1)
    # The first steps (ln V at initialisation) would flatten every later difference.
    top = float(np.percentile(losses, 97)) if len(losses) else 1.0
    bottom = float(losses.min()) if len(losses) else 0.0
    for ax, (key, label) in zip(axes, AXES):
        ax.set_xlabel(label.replace("FLOPs", f"FLOPs, {unit[0]}") if key == "flops" else label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom - 0.05 * (top - bottom), top + 0.05 * (top - bottom))
    axes[0].set_ylabel("loss (nats/token)")
    for run, c in zip(runs, colors):
        for _ in run.growths[:1]:
            axes[0].plot([], [], color=c, ls=":", lw=1, label=f"{run.name} growths")
    axes[0].legend(fontsize=8, loc="upper right")
    fig.suptitle("loss against steps, tokens and training FLOPs (dotted: growths)")
    fig.tight_layout()
    path = os.path.join(out, "compare_runs.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_names(run_dirs: Sequence[str]) -> list[str]:
    """Each run's directory name, or its whole path where two runs share a name."""
    names = [os.path.basename(os.path.normpath(r)) for r in run_dirs]
    return [n if names.count(n) == 1 else os.path.normpath(r) for n, r in zip(names, run_dirs)]


def write_comparison(runs: Sequence[RunRecords], budgets: Sequence[float], out: str) -> tuple[str, list[str]]:
    """The loss table at `budgets` as DIR/loss_at_flops.md and .json, and the figure; returns the
    markdown table and the written paths."""
    rows = loss_table(runs, budgets)
    os.makedirs(out, exist_ok=True)
    md = format_markdown(runs, rows)
    paths = [os.path.join(out, "loss_at_flops.md"), os.path.join(out, "loss_at_flops.json")]
    with open(paths[0], "w") as f:
        f.write("# Loss at equal training FLOPs\n\n" + md + "\n")
    with open(paths[1], "w") as f:
        json.dump({"runs": [r.name for r in runs], "rows": rows}, f, indent=1)
    return md, [plot(runs, out), *paths]
