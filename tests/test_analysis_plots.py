"""Properties of the analysis figures and report that keep them from misleading: integer
layer ticks, shared colour scales, chance lines, noise verdicts (issue 14, items 2 and 7)."""

import json
import math

import pytest
import torch

from grow_megatron.analysis import plots
from grow_megatron.analysis.report import noise_verdict, table

pytestmark = pytest.mark.usefixtures("one_thread")

L = 7  # odd on purpose: matplotlib's default locator puts ticks at 2.5, 7.5 on such ranges
LAYER_LABELS = ("layer", "start layer", "skipped layer", "effect on layer", "block")


@pytest.fixture(scope="module")
def figs(tmp_path_factory):
    """Every figure of every analysis for two models, by file name (rendered once)."""
    seen = []
    save = plots._save

    def keep(fig, path, rect=None):
        seen.append((path, fig))
        return save(fig, path, rect)

    out = str(tmp_path_factory.mktemp("figs"))
    a, b = _results(5.5, 0.30), _results(2.3, 0.36)  # the 0-5.5 next to 0-2.3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_save", keep)
        for name in a:
            plots.plot_any(name, {"static": a[name], "LIDAS": b[name]}, out, block_size=3)
    return {p.split("/")[-1]: f for p, f in seen}


def _ramp(scale):
    return [[scale * (i + 1) * (j + 1) / L**2 if j > i else 0.0 for j in range(L)] for i in range(L)]


def _results(scale: float, acc: float) -> dict[str, dict]:
    lin = [0.1 * i for i in range(L)]
    eff = {"propagated": _ramp(scale), "local": _ramp(scale / 2), "output_max": lin, "output_mean": lin}
    return {
        "tuned-lens": {
            "kl": lin,
            "top_k_overlap": [0.5] * L,
            "top_k": 5,
            "num_layers": L,
            "tokens": 99,
            "early_exit": {
                "accuracy": [acc] * L,
                "final_accuracy": acc,
                "relative_accuracy": [1.0] * L,
                "examples": 50,
                "final_se": 0.05,
                "chance_accuracy": 0.2,
            },
        },
        "depth-score": {
            "depth_score": 2.5,
            "depth_score_se": 0.2,
            "relative_depth_score": 2.5 / (L - 1),
            "distribution": [1 / L] * L,
            "mean_dout": lin,
            "num_layers": L,
            "examples": 8,
        },
        "effects": {
            "num_layers": L,
            "examples": 4,
            "effects": {f"{p}/{m}": eff for p in ("layer", "attn", "mlp") for m in ("current", "future")},
        },
        "interventions": {
            "num_layers": L,
            "examples": 50,
            "baseline_accuracy": acc,
            "baseline_se": 0.05,
            "chance_accuracy": 0.2,
            "interventions": {
                "swap": {"1": {"starts": list(range(L - 1)), "accuracy": [acc - 0.1] * (L - 1), "se": [0.05] * (L - 1)}}
            },
        },
        "sublayer": {
            f"{n}_{s}": ([40.0] + [0.3 + 0.01 * i for i in range(L - 1)]) if s == "rel" else [0.1] * L
            for n in ("attn", "mlp", "layer")
            for s in ("rel", "cos")
        }
        | {"num_layers": L, "tokens": 99, "block_size": 3},
        "block-similarity": {"similarity": [[1.0, 0.2], [0.2, 1.0]], "block_size": 3},
    }


def test_layer_axes_have_integer_ticks(figs):
    checked = 0
    for name, fig in figs.items():
        for ax in fig.axes:
            if ax.get_xlabel() in LAYER_LABELS:
                lo, hi = ax.get_xlim()
                ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
                assert ticks and all(float(t).is_integer() for t in ticks), (name, ax.get_title(), ticks)
                checked += 1
    assert checked >= 15


def test_effect_heatmaps_share_one_labelled_colour_scale(figs):
    fig = figs["effects_layer_future.png"]
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 4  # 2 models x (propagated, local)
    vmax = 5.5 * (L - 1) * L / L**2  # the larger model's maximum, used by both
    assert [im.get_clim() for im in images] == [(0.0, pytest.approx(vmax))] * 4
    bars = [ax for ax in fig.axes if not ax.images]  # the colour-bar axes
    assert bars and all("relative change" in ax.get_ylabel() for ax in bars)
    sim = figs["block-similarity.png"]
    assert all(im.get_clim() == (-1, 1) for ax in sim.axes for im in ax.images)


def test_effects_output_is_a_grid_with_a_shared_axis(figs):
    fig = figs["effects_output.png"]
    w, h = fig.get_size_inches()
    assert w / h < 2  # was six panels in a 2376 x 374 px strip
    axes = [ax for ax in fig.axes if ax.lines]
    assert len(axes) == 6 and len({ax.get_ylim() for ax in axes}) == 1
    assert all(ax.get_xlabel() == "skipped layer" and ax.get_ylabel() for ax in axes)


def test_interventions_show_chance_noise_and_zoomed_axis(figs):
    fig = figs["interventions.png"]
    ax = fig.axes[0]
    chance = [ln for ln in ax.lines if ln.get_label() == "chance"]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(0.2)
    lo, hi = ax.get_ylim()
    assert (lo, hi) != (-0.02, 1.02) and lo <= 0.2 and hi >= 0.36 + 0.05 and hi - lo < 0.6
    assert len(ax.patches) == 2  # one ±SE band per model
    assert "n = 50" in fig._suptitle.get_text()


def test_sublayer_layer0_does_not_flatten_the_rest(figs):
    fig = figs["sublayer.png"]
    ax = fig.axes[0]
    assert ax.get_ylim()[1] < 1.0  # scaled to layers >= 1 (0.3..0.36), not to layer 0's 40
    assert any("layer 0: 40" in t.get_text() for t in ax.get_legend().get_texts())


def test_loss_figure_has_depth_in_legend_and_whole_layer_ticks(tmp_path):
    from grow_megatron.training.metrics import loss_figure

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for s in range(20):
            f.write(json.dumps({"step": s, "loss": 5 - 0.1 * s, "depth": 12}) + "\n")
    (tmp_path / "events.jsonl").write_text("")
    fig = loss_figure(str(tmp_path))
    try:
        ax, ax2 = fig.axes
        assert "depth" in [t.get_text() for t in ax.get_legend().get_texts()]
        lo, hi = ax2.get_ylim()
        ticks = [t for t in ax2.get_yticks() if lo <= t <= hi]
        assert all(float(t).is_integer() for t in ticks) and len(ticks) >= 3
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_report_says_when_a_difference_is_noise():
    assert noise_verdict((0.0, 0.03), (0.06, 0.035)).endswith("within noise)")
    assert "beyond noise" in noise_verdict((0.1, 0.02), (0.5, 0.02))
    a, b = _results(1, 0.30), _results(1, 0.36)
    lines = table("interventions", {"static": a["interventions"], "LIDAS": b["interventions"]})
    head = lines[0]
    assert "| n |" in head and "| chance |" in head
    assert "0.300 ± 0.050" not in lines[2]  # the table recomputes the SE from n (add-two estimate)
    assert any("unmodified accuracy, static vs LIDAS" in ln and "within noise" in ln for ln in lines)


def test_cost_estimate_counts_the_layer_calls_it_will_make():
    """The estimate's layer passes equal the layer calls the analyses actually make."""
    from grow_megatron.analysis.data import encode_mc, mc_batches, token_batches
    from grow_megatron.analysis.effects import EffectsConfig, effects_analysis
    from grow_megatron.analysis.interventions import InterventionConfig, intervention_scores
    from grow_megatron.analysis.runner import ResidualRunner
    from grow_megatron.analysis.suite import estimate
    from grow_megatron.analysis.toy import char_tokenizer, tiny_llama, toy_tasks

    class Counting(ResidualRunner):
        calls = 0

        def attn(self, layer, h, ctx):
            self.calls += 1
            return super().attn(layer, h, ctx)

    m = tiny_llama(layers=5, hidden=16, vocab=64)
    enc = encode_mc(toy_tasks(5), char_tokenizer())
    cfg = InterventionConfig(swap_sizes=[1, 2], skip_sizes=[1], reverse_sizes=[3], batch_size=2)
    r = Counting(m)
    est = estimate("interventions", r, cfg, mc=mc_batches(enc, 2), examples=5)
    r.calls = 0
    with torch.no_grad():
        intervention_scores(r, enc, cfg, progress=False)
    assert est.passes == r.calls
    ecfg = EffectsConfig(parts=["layer", "attn"], modes=["future"], boundaries=[0.5], batch_size=2)
    batches = token_batches(torch.randint(0, 64, (2, 7)), 2)
    est = estimate("effects", r, ecfg, batches)
    r.calls = 0
    effects_analysis(r, batches, ecfg, progress=False)
    U = est.passes - r.calls  # what is left is the unembeddings, counted in layer-pass units
    from grow_megatron.analysis.cost import unembed_passes

    assert U == pytest.approx(len(batches) * 2 * (1 + 5) * unembed_passes(r))
    assert math.isfinite(est.seconds) and est.seconds > 0
