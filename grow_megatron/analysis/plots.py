"""Paper-style figures of the analysis results (matplotlib, rendered off-screen).

Every function takes {model label: result dict} as produced by the analysis functions, so one
call overlays several models (baseline vs MIDAS vs LIDAS), and returns the written paths.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

from matplotlib.figure import Figure


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw):
    # A bare Figure (Agg canvas on save) instead of pyplot: no global backend or figure
    # registry is touched, so this works headless and inside notebooks alike.
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _block_lines(ax, num_layers: int, block_size: int | None) -> None:
    """Grey vertical lines at the first layer of every block (as in the paper's Fig. 4/6)."""
    if block_size and block_size > 0:
        for x in range(block_size, num_layers, block_size):
            ax.axvline(x, color="0.75", lw=0.8, zorder=0)


def _lines(ax, results: dict[str, dict], key: str, title: str, ylabel: str, block_size: int | None = None,
           x0: int = 0) -> None:
    L = 0
    for label, res in results.items():
        ys = res.get(key)
        if ys is None:
            continue
        L = max(L, len(ys))
        ax.plot(range(x0, x0 + len(ys)), ys, marker="o", ms=3, label=label)
    _block_lines(ax, L + x0, block_size)
    ax.set_title(title)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_lens(results: dict[str, dict], path: str, block_size: int | None = None) -> list[str]:
    """Per-layer KL, top-k overlap (Fig. 1B) and, when present, early-exit accuracy (Fig. 1C)."""
    has_acc = any("early_exit" in r for r in results.values())
    fig, axes = _subplots(1, 3 if has_acc else 2, figsize=(13 if has_acc else 9, 3.6))
    _lines(axes[0], results, "kl", "Tuned lens KL(final || lens)", "KL (nats)", block_size)
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_ylim(bottom=0)
    k = next(iter(results.values())).get("top_k", 5)
    _lines(axes[1], results, "top_k_overlap", f"Top-{k} overlap with final prediction", "overlap", block_size)
    if has_acc:
        acc = {lbl: r["early_exit"] for lbl, r in results.items() if "early_exit" in r}
        _lines(axes[2], acc, "relative_accuracy", "Early-exit accuracy (relative to final)", "relative accuracy",
               block_size)
    return [_save(fig, path)]


def plot_depth_score(results: dict[str, dict], path: str) -> list[str]:
    """Depth score per model (Fig. 1A) and the per-layer effect distribution behind it."""
    fig, (a0, a1) = _subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    labels = list(results)
    scores = [results[lbl]["depth_score"] for lbl in labels]
    a0.bar(range(len(labels)), scores, color=[f"C{i}" for i in range(len(labels))])
    a0.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    a0.set_ylabel("depth score (expected layer)")
    a0.set_title("Depth score")
    for i, s in enumerate(scores):
        if not math.isnan(s):
            a0.text(i, s, f"{s:.2f}", ha="center", va="bottom", fontsize=8)
    _lines(a1, results, "distribution", "Normalised future output effect per layer", "share of effect")
    return [_save(fig, path)]


def _heat(ax, mat, title: str, xlabel: str = "effect on layer", ylabel: str = "skipped layer",
          vmin=None, vmax=None, cmap: str = "viridis"):
    im = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax, origin="upper", aspect="equal", interpolation="nearest")
    n_rows, n_cols = len(mat), len(mat[0]) if len(mat) else 0
    step = max(1, max(n_rows, n_cols) // 12)  # at most ~12 integer ticks per axis
    ax.set_xticks(range(0, n_cols, step))
    ax.set_yticks(range(0, n_rows, step))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _mask_upper(mat: list[list[float]]) -> list[list[float]]:
    """Hide target <= source cells (undefined) so the colour scale shows only real effects."""
    return [[v if j > i else math.nan for j, v in enumerate(row)] for i, row in enumerate(mat)]


def plot_effects(results: dict[str, dict], out_dir: str, prefix: str = "effects") -> list[str]:
    """One figure per (part, mode): rows = models, columns = propagated / local relative change
    on later layers (Fig. 5a/5b, 7b); plus one figure of the output effects, models overlaid."""
    paths = []
    keys = list(next(iter(results.values()))["effects"])
    for key in keys:
        cols = ["propagated"] + (["local"] if "local" in next(iter(results.values()))["effects"][key] else [])
        fig, axes = _subplots(len(results), len(cols), figsize=(4.4 * len(cols), 3.8 * len(results)),
                                 squeeze=False)
        for r, (label, res) in enumerate(results.items()):
            for c, col in enumerate(cols):
                _heat(axes[r][c], _mask_upper(res["effects"][key][col]), f"{label}: {key} skip, {col}")
        paths.append(_save(fig, os.path.join(out_dir, f"{prefix}_{key.replace('/', '_')}.png")))
    fig, axes = _subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        _lines(ax, {lbl: res["effects"][key] for lbl, res in results.items()}, "output_max",
               f"output effect: {key}", "max ||Δ softmax||")
    paths.append(_save(fig, os.path.join(out_dir, f"{prefix}_output.png")))
    return paths


def plot_interventions(results: dict[str, dict], path: str, block_size: int | None = None) -> list[str]:
    """Accuracy vs start layer; one panel per (kind, k), models overlaid, unmodified accuracy
    dashed (Fig. 3 swaps, Fig. 6 reversals)."""
    panels: list[tuple[str, str]] = []
    for res in results.values():
        for kind, by_k in res["interventions"].items():
            for k in by_k:
                if (kind, k) not in panels:
                    panels.append((kind, k))
    if not panels:
        panels = [("none", "0")]
    n = len(panels)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = _subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), squeeze=False)
    for idx, (kind, k) in enumerate(panels):
        ax = axes[idx // ncol][idx % ncol]
        L = 0
        for i, (label, res) in enumerate(results.items()):
            e = res["interventions"].get(kind, {}).get(k)
            L = max(L, res["num_layers"])
            if e:
                ax.plot(e["starts"], e["accuracy"], marker="o", ms=3, color=f"C{i}", label=label)
            ax.axhline(res["baseline_accuracy"], color=f"C{i}", ls="--", lw=0.8)
        _block_lines(ax, L, block_size)
        ax.set_title(f"{kind} len={k}")
        ax.set_xlabel("start layer")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for idx in range(n, nrow * ncol):
        axes[idx // ncol][idx % ncol].axis("off")
    return [_save(fig, path)]


def plot_sublayer(results: dict[str, dict], path: str, block_size: int | None = None) -> list[str]:
    """Relative contribution and cosine to the residual stream of attention and MLP (Fig. 4)."""
    fig, axes = _subplots(2, 2, figsize=(10, 6.4))
    _lines(axes[0][0], results, "attn_rel", "Attention ||a|| / ||h||", "relative contribution", block_size)
    _lines(axes[0][1], results, "attn_cos", "Attention cos(a, h)", "cosine", block_size)
    _lines(axes[1][0], results, "mlp_rel", "MLP ||m|| / ||h + a||", "relative contribution", block_size)
    _lines(axes[1][1], results, "mlp_cos", "MLP cos(m, h + a)", "cosine", block_size)
    return [_save(fig, path)]


def plot_similarity(results: dict[str, dict], path: str) -> list[str]:
    """Cosine similarity between the MLP weights of blocks (Fig. 7a), one heatmap per model."""
    n = len(results)
    fig, axes = _subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, (label, res) in zip(axes[0], results.items()):
        _heat(ax, res["similarity"], f"{label}: MLP weight cosine (b={res['block_size']})", xlabel="block",
              ylabel="block", vmin=-1, vmax=1, cmap="RdBu_r")
        nb = len(res["similarity"])
        for i in range(nb):
            for j in range(nb):
                v = res["similarity"][i][j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 else "black")
    return [_save(fig, path)]


def plot_any(name: str, results: dict[str, dict], out_dir: str, block_size: int | None = None) -> list[str]:
    """The figure(s) of analysis `name` written under out_dir."""
    p = os.path.join(out_dir, f"{name}.png")
    if name == "tuned-lens":
        return plot_lens(results, p, block_size)
    if name == "depth-score":
        return plot_depth_score(results, p)
    if name == "effects":
        return plot_effects(results, out_dir)
    if name == "interventions":
        return plot_interventions(results, p, block_size)
    if name == "sublayer":
        return plot_sublayer(results, p, block_size)
    if name == "block-similarity":
        return plot_similarity(results, p)
    raise ValueError(f"no figure for analysis {name!r}")


__all__: Sequence[str] = ("plot_any", "plot_lens", "plot_depth_score", "plot_effects", "plot_interventions",
                          "plot_sublayer", "plot_similarity")
