"""A study's files and steps: where every output goes (StudyLayout), the steps and their order (plan),
and the JSON reading/writing both the runner and the report use."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from grow_megatron.study.config import StudyConfig


@dataclass(frozen=True)
class Step:
    """One unit of work with its own done-marker."""

    phase: str
    variant: str | None = None
    seed: int | None = None

    def title(self) -> str:
        who = f"{self.variant} seed {self.seed}: " if self.variant is not None else ""
        return who + self.phase

    def matches(self, spec: str) -> bool:
        want = spec.split(":")
        have = [self.phase, self.variant or "", "" if self.seed is None else str(self.seed)]
        return all(w == h for w, h in zip(want, have))


class StudyLayout:
    """Where a study's files go (all under OUT_DIR)."""

    def __init__(self, out_dir: str):
        self.out = out_dir

    def seed_dir(self, variant: str, seed: int) -> str:
        return os.path.join(self.out, "variants", variant, f"seed{seed}")

    def run_dir(self, variant: str, seed: int) -> str:
        return os.path.join(self.seed_dir(variant, seed), "run")

    def hf_dir(self, variant: str, seed: int) -> str:
        return os.path.join(self.seed_dir(variant, seed), "hf")

    def train_json(self, variant: str, seed: int) -> str:
        return os.path.join(self.seed_dir(variant, seed), "train.json")

    def eval_json(self, variant: str, seed: int) -> str:
        return os.path.join(self.seed_dir(variant, seed), "eval.json")

    def analysis_dir(self, variant: str, seed: int) -> str:
        return os.path.join(self.seed_dir(variant, seed), "analysis")

    def loop_dir(self, seed: int) -> str:
        return os.path.join(self.out, "loop", f"seed{seed}")

    def heldout(self) -> str:
        return os.path.join(self.out, "heldout.jsonl")

    def marker(self, step: Step) -> str:
        if step.variant is not None:
            return os.path.join(self.seed_dir(step.variant, step.seed), "phases", f"{step.phase}.json")
        name = step.phase if step.seed is None else f"{step.phase}-seed{step.seed}"
        return os.path.join(self.out, "phases", f"{name}.json")

    def log(self, step: Step) -> str:
        return os.path.splitext(self.marker(step))[0] + ".log"


def label(cfg: StudyConfig, variant: str, seed: int) -> str:
    """A model's label in analyses and figures: the variant, with the seed when there are several."""
    return variant if len(cfg.seeds) == 1 else f"{variant}-s{seed}"


def plan(cfg: StudyConfig) -> list[Step]:
    """The steps of a study, in order: per seed and variant train, convert, eval, analyze; then
    the loop sweep per seed (it needs every variant's eval to pick the best), then the
    loss-vs-FLOPs comparison of all runs. The report itself is written after the steps."""
    steps = [
        Step(p, v.name, s)
        for s in cfg.seeds
        for v in cfg.variants
        for p in ("train", "convert", "eval", "analyze")
        if p in cfg.phases
    ]
    if "loop" in cfg.phases and cfg.loop is not None:
        steps += [Step("loop", None, s) for s in cfg.seeds]
    if "report" in cfg.phases:
        steps.append(Step("compare-runs"))
    return steps


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj: dict) -> None:
    """Write atomically: a marker or result file is either whole or absent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
