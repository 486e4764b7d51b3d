"""A run directory and its records: the one place that names what a run keeps in its run_dir.

    RUN_DIR/config.yaml       the resolved run config (training, `convert from-hf`, `grow`)
    RUN_DIR/checkpoints/      the checkpoint root (engine/checkpoint/ owns what is inside)
    RUN_DIR/metrics.jsonl     one record per logged step
    RUN_DIR/events.jsonl      one record per event (growths)
    RUN_DIR/tb/, loss.png     TensorBoard logs, the loss plot
    RUN_DIR/train.lock(.json) the trainer's lock and who holds it
    RUN_DIR/archive-<time>/   an earlier run's outputs (checkpoint.resume=fresh)

It sits in config/, the lowest layer, because every layer above it reads or writes a run
directory (training writes it, convert/grow create one, eval/analyze/study read it) and none of
this needs torch: plain paths, JSON lines and moves. The engine receives only
`RunDir.checkpoints`, a checkpoint root. tests/test_owners.py fails when one of these names is
spelled anywhere else in the package.

`GrowthEvent` is the one record of a growth as it happened (meta.json's `growths`, events.jsonl,
the history exported with a model); `Growth` (growth/operators.py) is the plan it executed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
TENSORBOARD = "tb"
LOSS_PLOT = "loss.png"
LOCK = "train.lock"
LOCK_HOLDER = "train.lock.json"
WANDB_ID = "wandb_id"
TOKENIZER = "tokenizer"
CONFIG_HISTORY = "config_history.jsonl"
ARCHIVE_PREFIX = "archive-"
OUTPUTS = (CHECKPOINTS, METRICS, EVENTS, CONFIG, CONFIG_HISTORY, TENSORBOARD, LOSS_PLOT)
"""What a run writes into its run_dir (checkpoint.resume=fresh moves these into an archive)."""


@dataclass(frozen=True)
class GrowthEvent:
    """One growth as it happened: where it was (step), what it did (the `Growth`'s record) and
    how (seconds, the new pipeline split, host staging, offline)."""

    step: int
    """The global step before which the growth was applied."""
    operator: str
    old_depth: int
    new_depth: int
    source_map: list[int]
    """For each position of the grown model, the old layer that initialised it."""
    new_positions: list[int]
    zero_outputs: bool
    seconds: float = 0.0
    pipeline_split: list[int] = field(default_factory=list)
    """Layers per (virtual) pipeline stage after the growth."""
    host_staged: bool | None = None
    """In-memory growths: whether the old state went through host memory (None: not recorded)."""
    offline: bool = False
    """Grown on disk by `grow-megatron grow`."""

    @classmethod
    def of(cls, step: int, growth: Any, **how: Any) -> GrowthEvent:
        """The event of `growth` (a growth.operators.Growth) applied before `step`."""
        return cls(step=step, **growth.to_dict(), **how)

    def to_dict(self) -> dict:
        """The JSON record (meta.json, events.jsonl), keys in their historical order."""
        out = {
            "step": self.step,
            "seconds": self.seconds,
            "operator": self.operator,
            "old_depth": self.old_depth,
            "new_depth": self.new_depth,
            "source_map": list(self.source_map),
            "new_positions": list(self.new_positions),
            "zero_outputs": self.zero_outputs,
            "pipeline_split": list(self.pipeline_split),
        }
        if self.host_staged is not None:
            out["host_staged"] = self.host_staged
        if self.offline:
            out["offline"] = True
        return out

    @classmethod
    def from_dict(cls, rec: dict) -> GrowthEvent:
        """Read a JSON record back (an events.jsonl line's `kind` is ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in names})


def growth_events(records: list | None) -> list[GrowthEvent]:
    """meta.json's (or an exported history's) `growths` list as events."""
    return [g if isinstance(g, GrowthEvent) else GrowthEvent.from_dict(g) for g in records or []]


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory, its records, and its archive."""

    path: str

    @property
    def config(self) -> str:
        return os.path.join(self.path, CONFIG)

    @property
    def config_history(self) -> str:
        """The config's record: the start of the run, then each deliberate change with its step."""
        return os.path.join(self.path, CONFIG_HISTORY)

    @property
    def checkpoints(self) -> str:
        """The checkpoint root: all the engine receives."""
        return os.path.join(self.path, CHECKPOINTS)

    @property
    def metrics(self) -> str:
        return os.path.join(self.path, METRICS)

    @property
    def events(self) -> str:
        return os.path.join(self.path, EVENTS)

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.path, TENSORBOARD)

    @property
    def loss_plot(self) -> str:
        return os.path.join(self.path, LOSS_PLOT)

    @property
    def lock(self) -> str:
        return os.path.join(self.path, LOCK)

    @property
    def lock_holder(self) -> str:
        return os.path.join(self.path, LOCK_HOLDER)

    @property
    def wandb_id(self) -> str:
        return os.path.join(self.path, WANDB_ID)

    @property
    def tokenizer(self) -> str:
        return os.path.join(self.path, TOKENIZER)

    def is_run(self) -> bool:
        """Whether the directory holds a run's config (a run directory, not just any directory)."""
        return os.path.isfile(self.config)

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl's records, in file order (unreadable lines dropped with a warning)."""
        return read_jsonl(self.metrics)

    def read_events(self) -> list[dict]:
        return read_jsonl(self.events)

    def growth_events(self) -> list[GrowthEvent]:
        """The growths recorded in events.jsonl."""
        return [GrowthEvent.from_dict(e) for e in self.read_events() if e.get("kind") == "growth"]

    @staticmethod
    def append(path: str, rec: dict) -> None:
        """Append one JSON line to a record file (metrics or events)."""
        with open(path, "a") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")

    @staticmethod
    def event_record(step: int, kind: str, data: dict) -> dict:
        """An events.jsonl record."""
        return {"step": step, "kind": kind, **data}

    def truncate_records(self, step: int) -> None:
        """Drop the records at or after `step` (written by an interrupted run after its last
        checkpoint), so that the files describe one run."""
        for path in (self.metrics, self.events):
            _truncate_from(path, step)

    def outputs(self) -> list[str]:
        """The paths of OUTPUTS that exist."""
        return [os.path.join(self.path, n) for n in OUTPUTS if os.path.exists(os.path.join(self.path, n))]

    def archive(self) -> str:
        """Move the run's outputs into RUN_DIR/archive-<UTC time>/ (a new directory); returns it.
        The caller syncs the run directory."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        dest = os.path.join(self.path, f"{ARCHIVE_PREFIX}{stamp}")
        while os.path.exists(dest):
            dest += "x"
        os.makedirs(dest)
        for name in OUTPUTS:
            if os.path.exists(os.path.join(self.path, name)):
                os.replace(os.path.join(self.path, name), os.path.join(dest, name))
        return dest


def _parse_lines(path: str) -> list[tuple[str, dict]]:
    """(line, record) for each readable line. A crash mid-write tears the last line; that must not
    block every later resume, so unreadable lines are dropped with one warning."""
    out, torn = [], []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                torn.append(n)
                continue
            out.append((line if line.endswith("\n") else line + "\n", rec))
    if torn:
        log.warning(
            f"warning: {path}: dropped {len(torn)} unreadable line(s) (line {', '.join(map(str, torn))}; "
            "a write cut off by a crash)"
        )
    return out


def _truncate_from(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    keep = [line for line, rec in _parse_lines(path) if rec.get("step", -1) < step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    return [rec for _, rec in _parse_lines(path)]
