"""`grow-megatron loop-sweep MODEL`: inference-time looping over blocks and repeats (SPEC 10).

    grow-megatron loop-sweep MODEL --out DIR [--blocks 4:8,6:10] [--repeats 1,2,3,4]
        [--tasks paper --n 100 --seed 0] [--heldout FILE] [--seq-length 128]

For every (block, repeats) the model (an HF directory, a native run or checkpoint) is looped
with `--loop START:ENDxR` semantics and scored on the reasoning primitives (SPEC 8) and the
held-out NLL; R = 1 is the plain model, scored once and shown as the baseline row. Writes
DIR/loop_sweep.json, DIR/loop_sweep.md (the table) and DIR/loop_sweep.png (heatmaps).

Default blocks (SPEC 10): the blocks the model's growths copied and the copies they inserted,
at their positions in the final model (read from the growth history that native checkpoints
and our HF exports carry; a block that a later growth cut in two is skipped); for a model
with no history, the b layers around the middle (LIDAS's rule).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from grow_megatron.config.base import ConfigError, check_output_dir
from grow_megatron.config.loop import LoopSpec
from grow_megatron.eval import primitives as P


@dataclass
class SweepConfig:
    """What a sweep scores."""

    blocks: list[tuple[int, int]]
    """[start, end) blocks, 0-indexed."""
    repeats: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    """Repeat counts; 1 (the plain model) is always scored as the baseline."""
    tasks: list[str] = field(default_factory=lambda: list(P.PAPER_TASKS))
    n: int = 100
    seed: int = 0
    heldout: list[str] = field(default_factory=list)
    seq_length: Optional[int] = None
    max_chunks: Optional[int] = None
    batch_size: int = 16


def history_blocks(history: Optional[dict]) -> list[tuple[int, int]]:
    """Blocks [start, end) of the final model that each recorded growth copied or inserted."""
    growths = (history or {}).get("growths") or []
    out: list[tuple[int, int]] = []
    for k, g in enumerate(growths):
        new = list(g["new_positions"])
        b, insert_at = len(new), new[0]
        copied = [g["source_map"][p] for p in new]  # old positions of the copied layers
        in_grown = [i if i < insert_at else i + b for i in copied]  # where they sit after g
        for block in (in_grown, new):
            for later in growths[k + 1:]:
                lb, at = len(later["new_positions"]), later["new_positions"][0]
                block = [p if p < at else p + lb for p in block]
            if block == list(range(block[0], block[0] + b)) and (block[0], block[0] + b) not in out:
                out.append((block[0], block[0] + b))
    return sorted(out)


def default_blocks(depth: int, history: Optional[dict], block_size: Optional[int] = None) -> list[tuple[int, int]]:
    from grow_megatron.growth.operators import lidas

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


def _score(model, tokenizer, cfg: SweepConfig, examples, heldout_batches, device) -> dict[str, Any]:
    from grow_megatron.eval import scoring as S

    out: dict[str, Any] = {}
    if examples:
        mc = S.evaluate_mc(S.hf_scorer(model, tokenizer, batch_size=cfg.batch_size), examples)
        out["primitives"] = {t: r.accuracy for t, r in mc.items()}
        out["accuracy"] = sum(out["primitives"].values()) / len(out["primitives"])
    if heldout_batches:
        fn = S.hf_logits_fn(model)
        out["nll"] = {path: S.heldout_nll(fn, batches, device=device).nll for path, batches in heldout_batches.items()}
        out["mean_nll"] = sum(out["nll"].values()) / len(out["nll"])
    return out


def sweep(model, tokenizer, cfg: SweepConfig, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Scores of the plain model and of every (block, repeats > 1)."""
    from grow_megatron.convert.looping import loop_hf_model
    from grow_megatron.eval import scoring as S
    from grow_megatron.eval.evaluate import read_heldout_ids

    depth = len(model.model.layers)
    for s, e in cfg.blocks:
        LoopSpec(s, e, 1).check("--blocks", depth)
    examples = [ex for t in cfg.tasks for ex in P.generate(t, cfg.n, cfg.seed)]
    ctx = getattr(model.config, "max_position_embeddings", 2048) or 2048
    seq = cfg.seq_length or min(2048, ctx)
    heldout = {}
    for path in cfg.heldout:
        batches = S.chunk_tokens(read_heldout_ids(path, tokenizer), seq + 1, cfg.batch_size, cfg.max_chunks)
        if not batches:
            raise ConfigError("--heldout", path, f"has fewer than {seq + 1} tokens: give more text or a smaller --seq-length")
        heldout[path] = batches
    runs = [(bl, r) for bl in cfg.blocks for r in cfg.repeats if r > 1]
    bar = None
    if progress:
        from tqdm import tqdm

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
        rows.append({"block": [s, e], "repeats": r, "loop": str(spec), "unrolled_depth": spec.unrolled_depth(depth),
                     **scores})
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return {"depth": depth, "blocks": [list(b) for b in cfg.blocks], "repeats": cfg.repeats, "tasks": cfg.tasks,
            "n": cfg.n, "seed": cfg.seed, "heldout": cfg.heldout, "seq_length": seq, "rows": rows,
            "seconds": time.perf_counter() - t0}


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
    import numpy as np
    from matplotlib.figure import Figure

    blocks, reps = result["blocks"], result["repeats"]
    plain = result["rows"][0]
    by = {(tuple(r["block"]), r["repeats"]): r for r in result["rows"][1:]}
    panels = [(k, lbl, cmap) for k, lbl, cmap in (("accuracy", "mean primitive accuracy (%)", "viridis"),
                                                  ("mean_nll", "held-out NLL (nats/token)", "magma_r"))
              if k in plain]
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
                ax.text(j, i, fmt.format(grid[i, j]), ha="center", va="center", fontsize=8,
                        color="black" if 0.299 * r + 0.587 * g + 0.114 * b_ > 0.5 else "white")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grow-megatron loop-sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="HF model directory, native run directory or checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (loop_sweep.json, .md, .png)")
    p.add_argument("--blocks", help="comma list of START:END blocks (default: from the growth history, see above)")
    p.add_argument("--block-size", type=int, help="size of the default blocks (default: the growth history's, or 4)")
    p.add_argument("--repeats", default="1,2,3,4", help="comma list of repeat counts (default 1,2,3,4)")
    p.add_argument("--tasks", default="paper", help="reasoning primitives as for `grow-megatron eval`, or 'none'")
    p.add_argument("--n", type=int, default=100, help="examples per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", action="append", default=[], metavar="FILE",
                   help="held-out text (.txt, or .jsonl with 'text') for NLL; repeatable")
    p.add_argument("--seq-length", type=int, help="NLL context length (default: min(2048, the model's))")
    p.add_argument("--max-chunks", type=int, help="at most this many NLL sequences per file")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--config", help="a native checkpoint's run config.yaml (default: RUN_DIR/config.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from grow_megatron.convert.hf import HISTORY_FIELD
    from grow_megatron.convert.load import load_model

    args = build_parser().parse_args(argv)
    tasks = [] if args.tasks == "none" else P.parse_tasks(args.tasks)
    repeats = parse_repeats(args.repeats)
    blocks = parse_blocks(args.blocks) if args.blocks else None
    for flag in ("n", "batch_size", "seq_length", "max_chunks", "block_size"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ConfigError("--" + flag.replace("_", "-"), v, "must be a positive integer")
    for path in args.heldout:
        if not os.path.isfile(path):
            raise ConfigError("--heldout", path, "no such file: give a plain-text or .jsonl file")
    if not tasks and not args.heldout:
        raise ConfigError("--tasks", args.tasks, "nothing to score: give tasks or --heldout FILE")
    check_output_dir(args.out, "--out")
    # Looping re-applies Llama decoder layers, so only Llama-layout models are accepted; the
    # primitives need the tokenizer (the loader names the missing files in one line).
    loaded = load_model(args.model, args.device, args.dtype, accept="llama", need_tokenizer=bool(tasks),
                        config=args.config)
    model, tokenizer = loaded.model, loaded.tokenizer
    depth = len(model.model.layers)
    history = getattr(model.config, HISTORY_FIELD, None)
    cfg = SweepConfig(blocks=blocks or default_blocks(depth, history, args.block_size), repeats=repeats, tasks=tasks,
                      n=args.n, seed=args.seed, heldout=list(args.heldout), seq_length=args.seq_length,
                      max_chunks=args.max_chunks, batch_size=args.batch_size)
    result = sweep(model, tokenizer, cfg, device=args.device, progress=not args.quiet)
    result["model"] = args.model
    result["growth_history_blocks"] = history_blocks(history)
    os.makedirs(args.out, exist_ok=True)
    md = table(result)
    with open(os.path.join(args.out, "loop_sweep.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "loop_sweep.md"), "w") as f:
        f.write(md + "\n")
    png = heatmap(result, os.path.join(args.out, "loop_sweep.png"),
                  title=f"{os.path.basename(os.path.normpath(args.model))}: looping a block at inference")
    print(md)
    print(f"wrote {os.path.join(args.out, 'loop_sweep.json')}, loop_sweep.md, {os.path.basename(png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
