"""Inference-time looping over blocks and repeats (docs/method.md §10), the library of `grow-megatron loop-sweep`.

For every (block, repeats) the model (an HF directory, a native run or checkpoint) is looped
with `--loop START:ENDxR` semantics and scored on the reasoning primitives (docs/method.md §8) and the
held-out NLL; R = 1 is the plain model, scored once and shown as the baseline row. `write_sweep`
writes DIR/loop_sweep.json, DIR/loop_sweep.md (the table) and DIR/loop_sweep.png (heatmaps).

Default blocks (docs/method.md §10): the blocks the model's growths copied and the copies they inserted,
at their positions in the final model (read from the growth history that native checkpoints
and our HF exports carry; a block that a later growth cut in two is skipped); for a model
with no history, the b layers around the middle (LIDAS's rule).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from grow_megatron.config.base import ConfigError
from grow_megatron.config.loop import LoopSpec
from grow_megatron.config.rundir import growth_events
from grow_megatron.convert.looping import loop_hf_model
from grow_megatron.eval import primitives, scoring
from grow_megatron.eval.evaluate import heldout_batches
from grow_megatron.growth.operators import lidas


@dataclass
class SweepConfig:
    """What a sweep scores."""

    blocks: list[tuple[int, int]]
    """[start, end) blocks, 0-indexed."""
    repeats: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    """Repeat counts; 1 (the plain model) is always scored as the baseline."""
    tasks: list[str] = field(default_factory=lambda: list(primitives.PAPER_TASKS))
    n: int = 100
    seed: int = 0
    heldout: list[str] = field(default_factory=list)
    seq_length: int | None = None
    max_chunks: int | None = None
    batch_size: int = 16


def history_blocks(history: dict | None) -> list[tuple[int, int]]:
    """Blocks [start, end) of the final model that each recorded growth copied or inserted."""
    growths = growth_events((history or {}).get("growths"))
    out: list[tuple[int, int]] = []
    for k, g in enumerate(growths):
        new = list(g.new_positions)
        b, insert_at = len(new), new[0]
        copied = [g.source_map[p] for p in new]  # old positions of the copied layers
        in_grown = [i if i < insert_at else i + b for i in copied]  # where they sit after g
        for block in (in_grown, new):
            for later in growths[k + 1 :]:
                lb, at = len(later.new_positions), later.new_positions[0]
                block = [p if p < at else p + lb for p in block]
            if block == list(range(block[0], block[0] + b)) and (block[0], block[0] + b) not in out:
                out.append((block[0], block[0] + b))
    return sorted(out)


def default_blocks(depth: int, history: dict | None, block_size: int | None = None) -> list[tuple[int, int]]:
    blocks = history_blocks(history)
    if block_size is not None:
        blocks = [bl for bl in blocks if bl[1] - bl[0] == block_size]
    if blocks:
        return blocks
    b = block_size or 4
    if b > depth:
        raise ConfigError("--block-size", b, f"is larger than the model's depth {depth}")
    g = lidas(depth, b)
    return [(g.copy_start, g.copy_start + b)]


def parse_blocks(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        spec = LoopSpec.parse(f"{item.strip()}x1", field="--blocks")
        out.append((spec.start, spec.end))
    return out


def parse_repeats(text: str) -> list[int]:
    try:
        reps = sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise ConfigError("--repeats", text, "must be a comma list of integers, e.g. 1,2,3,4") from None
    if not reps or reps[0] < 1:
        raise ConfigError("--repeats", text, "every repeat count must be >= 1 (1 = the plain model)")
    return reps


def _score(model, tokenizer, cfg: SweepConfig, examples, heldout, device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if examples:
        mc = scoring.evaluate_mc(scoring.hf_scorer(model, tokenizer, batch_size=cfg.batch_size), examples)
        out["primitives"] = {t: r.accuracy for t, r in mc.items()}
        out["accuracy"] = sum(out["primitives"].values()) / len(out["primitives"])
    if heldout:
        fn = scoring.hf_logits_fn(model)
        out["nll"] = {path: scoring.heldout_nll(fn, batches, device=device).nll for path, batches in heldout.items()}
        out["mean_nll"] = sum(out["nll"].values()) / len(out["nll"])
    return out


def sweep(model, tokenizer, cfg: SweepConfig, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Scores of the plain model and of every (block, repeats > 1)."""
    depth = len(model.model.layers)
    for s, e in cfg.blocks:
        LoopSpec(s, e, 1).check("--blocks", depth)
    examples = [ex for t in cfg.tasks for ex in primitives.generate(t, cfg.n, cfg.seed)]
    ctx = getattr(model.config, "max_position_embeddings", 2048) or 2048
    seq = cfg.seq_length or min(2048, ctx)
    heldout = {path: heldout_batches(path, tokenizer, seq, cfg.batch_size, cfg.max_chunks) for path in cfg.heldout}
    runs = [(bl, r) for bl in cfg.blocks for r in cfg.repeats if r > 1]
    bar = None
    if progress:
        bar = tqdm(total=len(runs) + 1, desc="loop-sweep", unit="model", file=sys.stderr)
    t0 = time.perf_counter()
    plain = _score(model, tokenizer, cfg, examples, heldout, device)
    rows = [{"block": None, "repeats": 1, "loop": None, "unrolled_depth": depth, **plain}]
    if bar:
        bar.update(1)
    for (s, e), r in runs:
        spec = LoopSpec(s, e, r)
        with loop_hf_model(model, spec):
            scores = _score(model, tokenizer, cfg, examples, heldout, device)
        rows.append(
            {"block": [s, e], "repeats": r, "loop": str(spec), "unrolled_depth": spec.unrolled_depth(depth), **scores}
        )
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return {
        "depth": depth,
        "blocks": [list(b) for b in cfg.blocks],
        "repeats": cfg.repeats,
        "tasks": cfg.tasks,
        "n": cfg.n,
        "seed": cfg.seed,
        "heldout": cfg.heldout,
        "seq_length": seq,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


def table(result: dict) -> str:
    """Markdown table: one row per (block, repeats), the plain model first."""
    tasks = result["tasks"]
    head = ["loop", "depth", *tasks, "mean acc", "held-out NLL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        prim = row.get("primitives", {})
        cells = [row["loop"] or "plain (baseline)", str(row["unrolled_depth"])]
        cells += [f"{100 * prim[t]:.1f}" for t in tasks] if prim else []
        cells.append(f"{100 * row['accuracy']:.1f}" if "accuracy" in row else "-")
        cells.append(f"{row['mean_nll']:.4f}" if "mean_nll" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(result: dict, path: str, title: str = "") -> str:
    """Mean primitive accuracy and held-out NLL over (block, repeats); R = 1 is the plain model."""
    blocks, reps = result["blocks"], result["repeats"]
    plain = result["rows"][0]
    by = {(tuple(r["block"]), r["repeats"]): r for r in result["rows"][1:]}
    panels = [
        (k, lbl, cmap)
        for k, lbl, cmap in (
            ("accuracy", "mean primitive accuracy (%)", "viridis"),
            ("mean_nll", "held-out NLL (nats/token)", "magma_r"),
        )
        if k in plain
    ]
    fig = Figure(figsize=(4.2 * len(panels) + 0.6, 0.55 * len(blocks) + 1.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label, cmap) in zip(axes, panels):
        scale = 100.0 if key == "accuracy" else 1.0
        grid = np.array([[scale * (plain[key] if r == 1 else by[(tuple(b), r)][key]) for r in reps] for b in blocks])
        im = ax.imshow(grid, cmap=cmap, aspect="auto")
        fmt = "{:.1f}" if key == "accuracy" else "{:.3f}"
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                r, g, b_, _ = im.cmap(im.norm(grid[i, j]))
                ax.text(
                    j,
                    i,
                    fmt.format(grid[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b_ > 0.5 else "white",
                )
        ax.set_xticks(range(len(reps)), [str(r) for r in reps])
        ax.set_yticks(range(len(blocks)), [f"{b[0]}:{b[1]}" for b in blocks])
        ax.set_xlabel("repeats R (1 = plain model)")
        ax.set_ylabel("looped block [start:end)")
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.05)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_sweep(result: dict, out_dir: str, model: str) -> tuple[str, list[str]]:
    """DIR/loop_sweep.json, .md and .png of a sweep of `model`; returns the table and the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    md = table(result)
    paths = [os.path.join(out_dir, "loop_sweep.json"), os.path.join(out_dir, "loop_sweep.md")]
    with open(paths[0], "w") as f:
        json.dump(result, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(md + "\n")
    paths.append(
        heatmap(
            result,
            os.path.join(out_dir, "loop_sweep.png"),
            title=f"{os.path.basename(os.path.normpath(model))}: looping a block at inference",
        )
    )
    return md, paths
