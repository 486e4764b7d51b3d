"""Run outputs on the logging rank: metrics.jsonl, events, TensorBoard, W&B, progress, plot."""

from __future__ import annotations

import json
import math
import os
import sys

from tqdm import tqdm

from grow_megatron.config.rundir import RunDir
from grow_megatron.growth.flops import format_flops


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled)

    def update(self, rec: dict) -> None:
        post = {"loss": f"{rec['loss']:.3f}", "depth": rec["depth"], "tok/s": f"{rec['tokens_per_s']:.0f}"}
        if "val_loss" in rec:
            post["val"] = f"{rec['val_loss']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _Lines:
    """Progress for logs that are not a terminal (a file, a batch job): a tqdm bar there is one
    endless line of carriage returns, so print a plain line every `interval` steps instead."""

    def __init__(self, total: int, interval: int):
        self.total, self.interval = total, interval

    def update(self, rec: dict) -> None:
        done = rec["step"] + 1
        if done % self.interval and done != self.total:
            return
        parts = [f"step {done}/{self.total}", f"loss {rec['loss']:.4f}", f"depth {rec['depth']}"]
        if "lr" in rec:
            parts.append(f"lr {rec['lr']:.3g}")
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
        if "flops" in rec:
            parts.append(format_flops(rec["flops"]))
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        pass


class _Null:
    def update(self, rec: dict) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsWriter:
    """Appends one JSON line per logged step to RUN_DIR/metrics.jsonl (and growth events to
    RUN_DIR/events.jsonl). On resume, records at or after the resume step (written by the
    interrupted run after its last checkpoint) are dropped so the files describe one run."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, resume_step: int = 0, wandb: dict | None = None):
        """wandb: None, or wandb.init's project, name and config (see WandbSink)."""
        self.enabled = enabled
        self.run_dir = run_dir
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        rd = RunDir(run_dir)
        self.metrics_path, self.events_path = rd.metrics, rd.events
        rd.truncate_records(resume_step)
        if tensorboard:
            try:
                # torch (the writer imports it): not at import; `grow-megatron compare-runs` imports this module.
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(RunDir(run_dir).tensorboard, purge_step=resume_step or None)
            except ImportError:
                self.tb = None
        if wandb is not None:
            self.wandb = WandbSink(run_dir, **wandb)

    def progress(self, total: int, initial: int, enabled: bool, interval: int | None = None):
        """A tqdm bar on a terminal; plain lines every `interval` steps (default: about 20 per
        run) when stderr, where the bar goes, is a file or a pipe."""
        if not self.enabled or not enabled:
            return _Null()
        if sys.stderr.isatty():
            return _Progress(total, initial, enabled)
        return _Lines(total, interval or max(1, round(total / 20)))

    def note(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def log(self, rec: dict) -> None:
        if not self.enabled:
            return
        RunDir.append(self.metrics_path, _json_safe(rec))
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"train/{k}" if k != "val_loss" else "eval/loss", v, rec["step"])
        if self.wandb is not None:
            self.wandb.log(rec)

    def event(self, step: int, kind: str, data: dict) -> None:
        if not self.enabled:
            return
        RunDir.append(self.events_path, RunDir.event_record(step, kind, data))
        if self.tb is not None:
            self.tb.add_text(kind, json.dumps(data), step)
        if self.wandb is not None:
            self.wandb.event(step, kind, data)

    def close(self, plot: bool = True) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
        if plot:
            try:
                plot_run(self.run_dir)
            except Exception as err:  # a plot must never fail a finished run
                tqdm.write(f"(could not draw the loss plot: {err})")


class WandbSink:
    """Weights & Biases beside TensorBoard: the same scalars (train/*, eval/loss) by global step,
    growths as growth/* scalars. The W&B run id is kept in RUN_DIR/wandb_id so that a resumed
    run continues its W&B run; its files go to $WANDB_DIR, or RUN_DIR when that is unset."""

    def __init__(self, run_dir: str, project: str, name: str, config: dict):
        # wandb: an optional dependency.
        import wandb

        id_file = RunDir(run_dir).wandb_id
        run_id = None
        if os.path.isfile(id_file):
            with open(id_file) as f:
                run_id = f.read().strip() or None
        self.run = wandb.init(
            project=project,
            name=name,
            id=run_id,
            resume="allow" if run_id else None,
            config=config,
            dir=None if os.environ.get("WANDB_DIR") else run_dir,
        )
        if run_id is None:
            with open(id_file, "w") as f:
                f.write(self.run.id + "\n")

    def log(self, rec: dict) -> None:
        scalars = {
            (f"train/{k}" if k != "val_loss" else "eval/loss"): v
            for k, v in rec.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.run.log(scalars, step=rec["step"])

    def event(self, step: int, kind: str, data: dict) -> None:
        scalars = {
            f"{kind}/{k}": v
            for k, v in data.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if scalars:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def _json_safe(rec: dict) -> dict:
    """Non-finite floats (a diverged step's loss) as null: bare NaN/Infinity is not JSON, and
    strict readers (jq, JavaScript, pandas with some engines) reject the whole file."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}


def plot_run(run_dir: str, out: str | None = None) -> str:
    """RUN_DIR/loss.png: training and held-out loss over steps, depth on a second axis, growths marked."""
    # matplotlib: pyplot's backend has to be chosen before pyplot is imported, and only plots need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = loss_figure(run_dir)
    out = out or RunDir(run_dir).loss_plot
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def loss_figure(run_dir: str):
    """The figure of plot_run (a pyplot figure; the caller closes it)."""
    # matplotlib, as in plot_run (whose backend is set by then).
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    recs = RunDir(run_dir).read_metrics()
    events = RunDir(run_dir).growth_events()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(
        [r["step"] for r in recs],
        [math.nan if r["loss"] is None else r["loss"] for r in recs],
        lw=1,
        label="train loss",
    )
    ev = [r for r in recs if "val_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", ms=3, label="held-out loss")
    for e in events:
        ax.axvline(e.step, color="grey", ls="--", lw=0.8)
        ax.text(e.step, ax.get_ylim()[1], f" {e.old_depth}→{e.new_depth}", va="top", fontsize=8, color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax2 = ax.twinx()
    ax2.step(
        [r["step"] for r in recs], [r["depth"] for r in recs], where="post", color="tab:green", alpha=0.5, label="depth"
    )
    ax2.set_ylabel("depth (layers)")
    # Whole layers only, from 0, so a constant depth does not get ticks like 11.4..12.6.
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylim(0, max([r["depth"] for r in recs], default=1) * 1.1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right")
    ax.set_title(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    return fig
