"""Paper-style figures of the analysis results (matplotlib, rendered off-screen).

Every function takes {model label: result dict} as produced by the analysis functions, so one
call overlays several models (baseline vs MIDAS vs LIDAS), and returns the written paths.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw):
    # A bare Figure (Agg canvas on save) instead of pyplot: no global backend or figure
    # registry is touched, so this works headless and inside notebooks alike.
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, path: str, rect: tuple[float, float, float, float] | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    return path


def _int_ticks(ax, axis: str = "x") -> None:
    """Whole-number ticks only: layers, blocks and start positions are integers."""
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def _block_lines(ax, num_layers: int, block_size: int | None) -> None:
    """Grey vertical lines at the first layer of every block (as in the paper's Fig. 4/6)."""
    if block_size and block_size > 0:
        for x in range(block_size, num_layers, block_size):
            ax.axvline(x, color="0.75", lw=0.8, zorder=0)


def _lines(
    ax, results: dict[str, dict], key: str, title: str, ylabel: str, block_size: int | None = None, x0: int = 0
) -> None:
    L = 0
    for label, res in results.items():
        ys = res.get(key)
        if ys is None:
            continue
        L = max(L, len(ys))
        ax.plot(range(x0, x0 + len(ys)), ys, marker="o", ms=3, label=label)
    _block_lines(ax, L + x0, block_size)
    _int_ticks(ax)
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
    axes[1].set_ylim(-0.02, 1.02)
    if has_acc:
        acc = {lbl: r["early_exit"] for lbl, r in results.items() if "early_exit" in r}
        n = next(iter(acc.values()))["examples"]
        # Relative accuracy (the paper's Fig. 1C) is undefined when a model's final accuracy is
        # 0; an empty panel would read as "no data", so fall back to absolute accuracy then.
        relative = all(ee["final_accuracy"] > 0 for ee in acc.values())
        key, what = ("relative_accuracy", "accuracy / final") if relative else ("accuracy", "accuracy")
        _lines(
            axes[2],
            acc,
            key,
            f"Early-exit {what} (n = {n})",
            "relative accuracy" if relative else "accuracy",
            block_size,
        )
        for i, (lbl, ee) in enumerate(acc.items()):
            ch, final = ee.get("chance_accuracy", math.nan), ee["final_accuracy"]
            if not math.isnan(ch):
                axes[2].axhline(
                    ch / final if relative else ch,
                    color=f"C{i}",
                    ls=":",
                    lw=1,
                    label=f"{lbl}: chance" + (" / final" if relative else ""),
                )
        axes[2].legend(fontsize=7, loc="best")
    return [_save(fig, path)]


def plot_depth_score(results: dict[str, dict], path: str) -> list[str]:
    """Depth score per model (Fig. 1A) with ±1 SE, and the per-layer effect distribution behind it."""
    fig, (a0, a1) = _subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    labels = list(results)
    scores = [results[lbl]["depth_score"] for lbl in labels]
    ses = [results[lbl].get("depth_score_se", math.nan) for lbl in labels]
    a0.bar(
        range(len(labels)),
        scores,
        yerr=[0 if math.isnan(e) else e for e in ses],
        capsize=4,
        color=[f"C{i}" for i in range(len(labels))],
    )
    a0.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    a0.set_ylabel("depth score (expected layer)")
    L = max(r["num_layers"] for r in results.values())
    a0.set_ylim(0, L - 1)  # the score's full range: layer 0 .. L-1
    _int_ticks(a0, "y")
    n = next(iter(results.values()))["examples"]
    a0.set_title(f"Depth score (n = {n}, ± 1 SE)", fontsize=10)
    for i, (sc, se) in enumerate(zip(scores, ses)):
        if not math.isnan(sc):
            a0.text(
                i, sc, f"{sc:.2f}" + ("" if math.isnan(se) else f" ± {se:.2f}"), ha="center", va="bottom", fontsize=8
            )
    _lines(a1, results, "distribution", "Normalised future output effect per layer", "share of effect")
    return [_save(fig, path)]


def _heat(
    ax,
    mat,
    title: str,
    xlabel: str = "effect on layer",
    ylabel: str = "skipped layer",
    vmin=None,
    vmax=None,
    cmap: str = "viridis",
    cbar_label: str = "",
):
    im = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax, origin="upper", aspect="equal", interpolation="nearest")
    n_rows, n_cols = len(mat), len(mat[0]) if len(mat) else 0
    step = max(1, max(n_rows, n_cols) // 12)  # at most ~12 integer ticks per axis
    ax.set_xticks(range(0, n_cols, step))
    ax.set_yticks(range(0, n_rows, step))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(cbar_label, fontsize=8)
    return im


def _mask_upper(mat: list[list[float]]) -> list[list[float]]:
    """Hide target <= source cells (undefined) so the colour scale shows only real effects."""
    return [[v if j > i else math.nan for j, v in enumerate(row)] for i, row in enumerate(mat)]


def _finite_max(mats) -> float:
    vals = [v for m in mats for row in m for v in row if v is not None and not math.isnan(v)]
    return max(vals) if vals else 1.0


def plot_effects(results: dict[str, dict], out_dir: str, prefix: str = "effects") -> list[str]:
    """One figure per (part, mode): rows = models, columns = propagated / local relative change
    on later layers (Fig. 5a/5b, 7b), one colour scale shared by every panel of the figure
    (all models, both columns); plus one grid of the output effects (rows = parts, columns =
    modes, one shared y axis), models overlaid."""
    paths = []
    first = next(iter(results.values()))
    keys = list(first["effects"])
    for key in keys:
        cols = ["propagated"] + (["local"] if "local" in first["effects"][key] else [])
        mats = {(lbl, c): _mask_upper(res["effects"][key][c]) for lbl, res in results.items() for c in cols}
        vmax = _finite_max(mats.values())
        fig, axes = _subplots(len(results), len(cols), figsize=(4.4 * len(cols), 3.8 * len(results)), squeeze=False)
        for r, label in enumerate(results):
            for c, col in enumerate(cols):
                _heat(
                    axes[r][c],
                    mats[(label, col)],
                    f"{label}: {key} skip, {col}",
                    vmin=0.0,
                    vmax=vmax,
                    cbar_label="max relative change ||c'-c|| / ||c||",
                )
        paths.append(_save(fig, os.path.join(out_dir, f"{prefix}_{key.replace('/', '_')}.png")))
    parts = list(dict.fromkeys(k.split("/")[0] for k in keys))
    modes = list(dict.fromkeys(k.split("/")[1] for k in keys))
    fig, axes = _subplots(
        len(parts), len(modes), figsize=(4.6 * len(modes), 3.2 * len(parts)), squeeze=False, sharey=True
    )
    for r, part in enumerate(parts):
        for c, mode in enumerate(modes):
            ax, key = axes[r][c], f"{part}/{mode}"
            if key not in keys:
                ax.axis("off")
                continue
            _lines(
                ax,
                {lbl: res["effects"][key] for lbl, res in results.items()},
                "output_max",
                f"output effect of skipping: {part}, {mode}",
                "max ||Δ softmax||₂",
            )
            ax.set_xlabel("skipped layer")
            ax.tick_params(labelleft=True)
    return paths + [_save(fig, os.path.join(out_dir, f"{prefix}_output.png"))]


def _accuracy_limits(results: dict[str, dict]) -> tuple[float, float]:
    """y limits that show every curve, the unmodified ±SE band and chance, with a margin."""
    vals = []
    for res in results.values():
        b, se = res["baseline_accuracy"], res.get("baseline_se", 0.0)
        vals += [b - se, b + se, res.get("chance_accuracy", b)]
        vals += [a for by_k in res["interventions"].values() for e in by_k.values() for a in e["accuracy"]]
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = max(0.03, 0.08 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi + pad)


def plot_interventions(results: dict[str, dict], path: str, block_size: int | None = None) -> list[str]:
    """Accuracy vs start layer; one panel per (kind, k), models overlaid (Fig. 3 swaps, Fig. 6
    reversals). Dashed: the unmodified accuracy with a ±1 SE band; dotted grey: chance. All
    panels share the y axis, zoomed to the data (not 0..1)."""
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
    height = 3.1 * nrow + 0.8  # + suptitle and legend rows
    fig, axes = _subplots(nrow, ncol, figsize=(3.8 * ncol, height), squeeze=False)
    lo, hi = _accuracy_limits(results)
    for idx, (kind, k) in enumerate(panels):
        ax = axes[idx // ncol][idx % ncol]
        L = 0
        for i, (label, res) in enumerate(results.items()):
            e = res["interventions"].get(kind, {}).get(k)
            L = max(L, res["num_layers"])
            if e:
                ax.plot(e["starts"], e["accuracy"], marker="o", ms=3, color=f"C{i}", label=label)
            b, se = res["baseline_accuracy"], res.get("baseline_se", math.nan)
            ax.axhline(b, color=f"C{i}", ls="--", lw=0.8, label=f"{label} unmodified")
            if not math.isnan(se):
                ax.axhspan(b - se, b + se, color=f"C{i}", alpha=0.12, lw=0)
        chance = next(iter(results.values())).get("chance_accuracy")
        if chance is not None and not math.isnan(chance):
            ax.axhline(chance, color="0.4", ls=":", lw=1.2, label="chance")
        _block_lines(ax, L, block_size)
        _int_ticks(ax)
        ax.set_title(f"{kind} {k} layer{'s' if k != '1' else ''}", fontsize=10)
        ax.set_xlabel("start layer")
        ax.set_ylabel("accuracy")
        ax.set_ylim(lo, hi)
        ax.grid(alpha=0.3)
    for idx in range(n, nrow * ncol):
        axes[idx // ncol][idx % ncol].axis("off")
    ex = sorted({r.get("examples", 0) for r in results.values()})
    fig.suptitle(
        f"Accuracy after each intervention (n = {', '.join(map(str, ex))} examples per point; "
        "band: unmodified ± 1 SE; dotted: chance)",
        fontsize=10,
    )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    # Room for the suptitle and for the legend below the panels.
    return [_save(fig, path, rect=(0, 0.35 / height, 1, 1))]


def _robust_ylim(ax, results: dict[str, dict], key: str) -> bool:
    """Scale the y axis to layers >= 1 when layer 0 dwarfs them (its residual is the bare
    embedding, so ||a|| / ||h|| there is often 10-100x the rest) and write layer 0's value at
    the top edge instead; log scale when layers >= 1 still span more than 10x. Returns whether
    layer 0 was put off scale."""
    rest = [v for r in results.values() for v in r.get(key, [])[1:]]
    first = [r[key][0] for r in results.values() if r.get(key)]
    if not rest or not first:
        return False
    lo, hi = min(0.0, min(rest)), max(rest)
    top = hi + 0.15 * (hi - lo or 1.0)
    log = min(rest) > 0 and hi / min(rest) > 10  # layers >= 1 alone span more than a decade
    if log:
        top = hi * 1.5
    if max(first) <= top:
        return False
    if log:
        ax.set_yscale("log")
        ax.set_ylim(min(rest) / 1.5, top)
    else:
        ax.set_ylim(lo, top)
    handles, labels = ax.get_legend_handles_labels()
    for i, (lbl, r) in enumerate(results.items()):
        if r.get(key) and r[key][0] > top:
            ax.plot([0], [top], marker="^", color=f"C{i}", ms=7, clip_on=False)
            if lbl in labels:  # the value goes into the legend, where it cannot hide a curve
                labels[labels.index(lbl)] = f"{lbl} (layer 0: {r[key][0]:.3g} ▲)"
    ax.legend(handles, labels, fontsize=8)
    return True


def plot_sublayer(results: dict[str, dict], path: str, block_size: int | None = None) -> list[str]:
    """Relative contribution and cosine to the residual stream of attention and MLP (Fig. 4).
    Relative-contribution panels are scaled to layers >= 1 when layer 0 is far larger (its
    value is then written at the top edge, marked ▲)."""
    fig, axes = _subplots(2, 2, figsize=(10, 6.4))
    _lines(axes[0][0], results, "attn_rel", "Attention ||a|| / ||h||", "relative contribution", block_size)
    _lines(axes[0][1], results, "attn_cos", "Attention cos(a, h)", "cosine", block_size)
    _lines(axes[1][0], results, "mlp_rel", "MLP ||m|| / ||h + a||", "relative contribution", block_size)
    _lines(axes[1][1], results, "mlp_cos", "MLP cos(m, h + a)", "cosine", block_size)
    for ax, key in ((axes[0][0], "attn_rel"), (axes[1][0], "mlp_rel")):
        if _robust_ylim(ax, results, key):
            ax.set_title(ax.get_title() + " (layer 0 off scale ▲" + (", log" if ax.get_yscale() == "log" else "") + ")")
    n = sorted({r.get("tokens", 0) for r in results.values()})
    fig.suptitle(f"Sublayer statistics, mean over n = {', '.join(map(str, n))} tokens", fontsize=10)
    return [_save(fig, path)]


def plot_similarity(results: dict[str, dict], path: str) -> list[str]:
    """Cosine similarity between the MLP weights of blocks (Fig. 7a), one heatmap per model,
    all on the same -1..1 scale."""
    n = len(results)
    fig, axes = _subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    for ax, (label, res) in zip(axes[0], results.items()):
        _heat(
            ax,
            res["similarity"],
            f"{label}: MLP weight cosine (b={res['block_size']})",
            xlabel="block",
            ylabel="block",
            vmin=-1,
            vmax=1,
            cmap="RdBu_r",
            cbar_label="cosine similarity",
        )
        nb = len(res["similarity"])
        for i in range(nb):
            for j in range(nb):
                v = res["similarity"][i][j]
                ax.text(
                    j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 else "black"
                )
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


__all__: Sequence[str] = (
    "plot_any",
    "plot_lens",
    "plot_depth_score",
    "plot_effects",
    "plot_interventions",
    "plot_sublayer",
    "plot_similarity",
)
