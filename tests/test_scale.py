"""Training at scale (issue 24 items 1-3): communication overlap, sequence parallelism and
activation recompute give the training of the plain engine, across a growth and a resume at
another layout, and really do what they are for.

Tolerances: recompute re-runs the same fp32 operations on the same inputs, so its gradients and
losses are compared bit for bit. Overlap changes how the distributed optimizer cuts its ranges
(one range per bucket instead of one per buffer), so the grad-norm's partial sums add up in
another order; sequence parallelism sums the norms' gain gradients over two sequence halves
(then over TP) instead of over the whole sequence. Both are fp32 reduce-order changes (~1e-7
relative per operation): the losses are compared with test_distributed.py's bound for the same
kind of change over a dozen AdamW steps, rel 1e-5, while a missing gradient (an un-reduced
norm gain, a bucket reduced before its last gradient arrived) moves the loss by O(1e-3) within
two steps.
"""

import json
import os
import shutil

import pytest
import torch

from dist_helpers import run_ranks
from engine_helpers import micro_overrides, random_batch
from grow_megatron.config.base import ConfigError
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.run import load_run_config
from grow_megatron.config.training import ParallelConfig
from grow_megatron.engine.build import ScaleOptions, build_engine, run_microbatches
from grow_megatron.engine.distributed import Layout, device_context, init_distributed
from grow_megatron.engine.resolve import engine_spec, resolve_run

LOSS_RTOL = 1e-5


# ---------------------------------------------------------------- config and resolution


def test_auto_is_on_for_a_gpu_job_and_off_on_cpu():
    par = ParallelConfig(tensor_parallel=2, pipeline_parallel=2, virtual_stages=2)
    assert par.resolved_scale("cuda", 64) == {
        "overlap_grad_reduce": True,
        "overlap_param_gather": True,
        "overlap_p2p_comm": True,
        "sequence_parallel": True,
    }
    assert not any(par.resolved_scale("cpu", 64).values())
    # A sequence TP does not divide keeps auto sequence parallelism off; overlap off turns the
    # param gather's auto off with it.
    par = ParallelConfig(tensor_parallel=2, overlap_grad_reduce="off", sequence_parallel="auto")
    assert par.resolved_scale("cuda", 63) == {
        "overlap_grad_reduce": False,
        "overlap_param_gather": False,
        "overlap_p2p_comm": False,
        "sequence_parallel": False,
    }


@pytest.mark.parametrize(
    "overrides,world,field",
    [
        ({"parallel.sequence_parallel": "on"}, 1, "parallel.sequence_parallel"),
        (
            {"parallel.sequence_parallel": "on", "parallel.tensor_parallel": 2, "model.seq_length": 33},
            2,
            "parallel.sequence_parallel",
        ),
        ({"parallel.overlap_param_gather": "on"}, 1, "parallel.overlap_param_gather"),
        ({"parallel.overlap_p2p_comm": "on", "parallel.pipeline_parallel": 2}, 2, "parallel.overlap_p2p_comm"),
        ({"parallel.bucket_size": 0}, 1, "parallel.bucket_size"),
        ({"train.recompute_num_layers": 0}, 1, "train.recompute_num_layers"),
        ({"train.recompute_modules": "[layernorm]"}, 1, "train.recompute_modules"),
    ],
)
def test_bad_scale_settings_are_refused_in_one_line(tmp_path, overrides, world, field):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, micro_overrides(tmp_path, **overrides), world_size=world)
    assert err.value.path == field


def test_uniform_recompute_groups_must_tile_every_stage_at_every_depth(tmp_path):
    # 4 -> 8 -> 12 layers on one stage: groups of 4 tile every depth, groups of 8 do not.
    cfg = load_run_config(
        None,
        micro_overrides(
            tmp_path, **{"train.recompute": "full", "model.vocab_size": 256, "train.recompute_num_layers": 4}
        ),
    )
    assert resolve_run(cfg, Layout(1, 0, 1, 1, 1), random_tokens=True).spec.scale.recompute_num_layers == 4
    cfg.train.recompute_num_layers = 8
    with pytest.raises(ConfigError, match="depth 4 splits into"):
        resolve_run(cfg, Layout(1, 0, 1, 1, 1), random_tokens=True)
    cfg.train.recompute_method = "block"  # the first 8 layers of a stage: any depth
    resolve_run(cfg, Layout(1, 0, 1, 1, 1), random_tokens=True)


# ---------------------------------------------------------------- recompute: same grads, less memory

V, S, B = 96, 128, 8


def _peak_activation_bytes(fn) -> int:
    """Highest net allocation of the CPU allocator while `fn` runs (torch.profiler's memory events)."""
    from grow_megatron.bench.accounting import allocation_peak

    with allocation_peak() as mem:
        fn()
    return mem["peak"]


def test_recompute_gives_bit_equal_gradients_with_less_activation_memory():
    model = ModelConfig(
        num_layers=4,
        hidden_size=64,
        ffn_hidden_size=160,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=V,
        seq_length=S,
    )
    batches = [random_batch(s, V, S, B) for s in range(2)]
    grads, peaks = {}, {}
    with device_context():
        init_distributed(1, 1, seed=3)
        for mode, kw in (("none", {}), ("selective", {"recompute": "selective"}), ("full", {"recompute": "full"})):
            torch.manual_seed(0)
            spec = engine_spec(model, V, scale=ScaleOptions(**kw))
            e = build_engine(spec, 4)
            run_microbatches(e, batches, forward_only=False)  # warm-up: lazy caches (RoPE) built
            loss = []
            peaks[mode] = _peak_activation_bytes(lambda: loss.append(run_microbatches(e, batches, forward_only=False)))
            grads[mode] = {n: p.main_grad.clone() for n, p in e.named_parameters()}
            grads[mode]["loss"] = loss[0].reshape(1)
    for mode in ("selective", "full"):
        for name, g in grads["none"].items():
            assert torch.equal(grads[mode][name], g), (mode, name)
    # Full recompute keeps one [s, b, h] input per layer instead of every intermediate: far below
    # half. Selective drops the attention's RoPE'd q/k, repeated k/v and output per layer.
    assert peaks["full"] < 0.5 * peaks["none"], peaks
    assert peaks["selective"] < peaks["none"], peaks


# ---------------------------------------------------------------- multi-rank: growth and resume

# 8 steps, 4 -> 8 -> 12 layers with growths before steps 1 and 3. Phase 1 trains steps 0-2 at
# TP=2 x DP=2 (so step 2 is the grown engine's second step, the first whose bucket reduces the
# backward hooks start); phase 2 resumes at TP=2 x PP=2 for steps 3-4 (growth at 3); phase 3
# resumes two of them at PP=2 x 2 virtual stages x DP=2 for steps 5-6. One spawn of 4 ranks for
# all of it: starting the processes costs more than the training.
_BASE = {"train.steps": 8, "growth.grow_steps": 6, "optim.decay_steps": 3}
_OVERLAP = {"parallel.overlap_grad_reduce": "on", "parallel.overlap_param_gather": "on", "parallel.bucket_size": 5000}
_VARIANTS = {
    "off": {},
    "overlap": _OVERLAP,  # 5000 parameters: a bucket per matrix or so, the embedding's last
    "sp": {"parallel.sequence_parallel": "on"},
    "full": {"train.recompute": "full"},
    "all": {**_OVERLAP, "parallel.sequence_parallel": "on", "train.recompute": "selective"},
}


def _tp_spread(engine) -> float:
    """Largest difference between the TP ranks' copies of the first layer's norm gain. Every TP
    rank holds the whole gain and updates it from its own gradient, so the copies stay equal only
    if the gradients were all-reduced over TP (under sequence parallelism each rank's gradient
    covers its s/TP tokens only)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    w = engine.chunks[0].decoder.layers[0].input_layernorm.weight.detach()
    hi, lo = w.clone(), w.clone()
    group = parallel_state.get_tensor_model_parallel_group()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    return float((hi - lo).max())


class _Probe:
    """Hooks on each engine the run builds (attached after its first step): whether a bucket's
    reduce is in flight when the backward pass reaches the first layer (i.e. before backward
    returns), how many times per step the last layer and its core attention run forward
    (recompute runs them again in backward), and the sequence length a layer sees."""

    def __init__(self):
        self.engine_id = None
        self.steps = []
        self.cur = None

    def on_step(self, engine, step, rec):
        if self.cur is not None and self.engine_id == id(engine):  # a step of the probed engine
            self.steps.append({"step": step, **self.cur, "norm_tp_spread": _tp_spread(engine)})
        if self.engine_id != id(engine):
            self.engine_id = id(engine)
            self._attach(engine)
        self.cur = {"in_flight": [], "layer_calls": 0, "attn_calls": 0, "seq": None, "depth": engine.depth}

    def _attach(self, engine):
        import weakref

        ddp = weakref.ref(engine.model[0])
        layers = engine.chunks[0].decoder.layers
        first, last = layers[0], layers[-1]

        def in_flight(module, grad_in, grad_out):
            if self.cur is not None:
                self.cur["in_flight"].append(any(g.grad_reduce_handle is not None for g in ddp().bucket_groups))

        def count(key):
            def hook(module, args, output):
                if self.cur is not None:
                    self.cur[key] += 1

            return hook

        def seq(module, args, kwargs, output):
            if self.cur is not None:
                self.cur["seq"] = output[0].shape[0]

        if engine.config.recompute_granularity != "full":  # a full backward hook needs autograd in forward
            first.register_full_backward_hook(in_flight)
        last.register_forward_hook(count("layer_calls"))
        last.self_attention.core_attention.register_forward_hook(count("attn_calls"))
        first.register_forward_hook(seq, with_kwargs=True)


def _scale_worker(rank, root):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from grow_megatron.training.loop import train

    def cfg(name, tp, pp, variant):
        return load_run_config(
            None,
            micro_overrides(
                os.path.join(root, name),
                **_BASE,
                **_VARIANTS[variant],
                **{"parallel.tensor_parallel": tp, "parallel.pipeline_parallel": pp},
            ),
            world_size=4,
        )

    out = {}
    for name in _VARIANTS:  # phase 1: TP=2 x DP=2, steps 0-2 (growth 4 -> 8 before step 1)
        probe = _Probe()
        res = train(cfg(name, 2, 1, name), stop_at=3, on_step=probe.on_step)
        out[name] = {"losses": res.losses, "probe": probe.steps, "growths": [g.step for g in res.growths]}
    if rank == 0:  # the plain run's checkpoint, resumed with everything on
        shutil.copytree(os.path.join(root, "off"), os.path.join(root, "cross"))
    dist.barrier()
    parallel_state.destroy_model_parallel()  # phase 2: TP=2 x PP=2 (same processes, new layout)
    for name, variant in [(n, n) for n in _VARIANTS] + [("cross", "all")]:
        probe = _Probe()
        res = train(cfg(name, 2, 2, variant), stop_at=5, on_step=probe.on_step)
        out.setdefault(name, {"losses": {}, "probe": [], "growths": []})
        out[name]["losses"].update(res.losses)
        out[name]["probe2"] = probe.steps
        out[name]["growths"] += [g.step for g in res.growths if g.step >= 3]
        out[name]["pp_first"] = parallel_state.is_pipeline_first_stage()
    # Phase 3: PP=2 x 2 virtual stages x DP=2, steps 5-6 resumed from phase 2's checkpoints, the
    # interleaved schedule with and without overlapped p2p, grad reduce and param gather.
    parallel_state.destroy_model_parallel()
    for name, extra in (("off", {}), ("overlap", {"parallel.overlap_p2p_comm": "on"})):
        c = load_run_config(
            None,
            micro_overrides(
                os.path.join(root, name),
                **_BASE,
                **_VARIANTS[name],
                **extra,
                **{"parallel.pipeline_parallel": 2, "parallel.virtual_stages": 2, "train.micro_batch_size": 1},
            ),
            world_size=4,
        )
        res = train(c, stop_at=7)
        out[name]["losses3"] = res.losses
        out[name]["overlap_p2p"] = c.parallel.overlap_p2p_comm
    # Rank 0 is the first pipeline stage in phase 2; its probe saw layers 0.. of each engine.
    if rank == 0:
        with open(os.path.join(root, "result.json"), "w") as f:
            json.dump(out, f)


@pytest.fixture(scope="module")
def scale_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    run_ranks(4, _scale_worker, str(root), out_dir=str(root), timeout=900)
    with open(root / "result.json") as f:
        res = json.load(f)
    for r in res.values():
        for key in ("losses", "losses3"):
            if key in r:
                r[key] = {int(k): v for k, v in r[key].items()}
    return res


def test_every_feature_trains_like_the_plain_engine_across_growth_and_resume(scale_runs):
    off = scale_runs["off"]
    assert sorted(off["losses"]) == [0, 1, 2, 3, 4] and off["growths"] == [1, 3]
    # The same operations again: bit for bit.
    assert scale_runs["full"]["losses"] == off["losses"]
    for name in ("overlap", "sp", "all", "cross"):
        run = scale_runs[name]
        assert sorted(run["losses"]) == ([3, 4] if name == "cross" else [0, 1, 2, 3, 4]), name
        for step, loss in off["losses"].items():
            if name == "cross" and step < 3:
                continue  # steps 0-2 were not run again: the plain run's checkpoint resumed
            assert run["losses"][step] == pytest.approx(loss, rel=LOSS_RTOL), (name, step)


def test_interleaved_pipeline_with_overlapped_p2p_trains_like_the_plain_one(scale_runs):
    off, on = scale_runs["off"]["losses3"], scale_runs["overlap"]["losses3"]
    assert sorted(off) == sorted(on) == [5, 6] and scale_runs["overlap"]["overlap_p2p"] == "on"
    for step, loss in off.items():
        assert on[step] == pytest.approx(loss, rel=LOSS_RTOL), step


def test_overlapped_reduce_is_in_flight_before_backward_returns(scale_runs):
    # Step 2 is the grown engine's second step: megatron's first step of an engine learns how
    # many gradients each parameter gets and reduces at the end; from then on the backward hooks
    # start each bucket's reduce-scatter as soon as its gradients are complete.
    for name, expect in (("overlap", True), ("all", True), ("off", False)):
        (step2,) = [s for s in scale_runs[name]["probe"] if s["step"] == 2]
        assert step2["in_flight"] and all(x is expect for x in step2["in_flight"]), (name, step2)


def test_sequence_parallel_and_recompute_follow_the_growth(scale_runs):
    """The probed steps run grown engines (depth 8 in phase 1, 12 in phase 2): each got the
    setting from the rebuilt spec, so its layers see s/TP tokens with sequence parallelism (and
    the TP ranks' norm gains stay equal: their gradients were all-reduced over TP), and run
    forward twice (the recompute) with full recompute, the core attention twice with selective
    recompute."""
    seq = 32
    for name in _VARIANTS:
        steps = scale_runs[name]["probe"] + scale_runs[name]["probe2"]
        assert {s["depth"] for s in steps} == {8, 12}, name
        for s in steps:
            mb = 1 if s["depth"] == 8 else 2  # DP=2 in phase 1, DP=1 in phase 2 (4 sequences of 2)
            layer = 2 if name == "full" else 1
            attn = 2 if name in ("full", "all") else 1  # "all" recomputes selectively
            assert (s["layer_calls"], s["attn_calls"]) == (layer * mb, attn * mb), (name, s)
            assert s["seq"] == (seq // 2 if name in ("sp", "all") else seq), (name, s)
            assert s["norm_tp_spread"] == 0.0, (name, s)


def test_memory_estimate_counts_recompute_and_sequence_parallelism(tmp_path):
    from grow_megatron.engine.memory import estimate

    base = {"model.seq_length": 1024, "train.micro_batch_size": 4, "train.global_batch_size": 8}
    plain = load_run_config(None, micro_overrides(tmp_path, **base))
    full = load_run_config(None, micro_overrides(tmp_path, **base, **{"train.recompute": "full"}))
    logits = 4 * 1024 * (4096 // 2) * 4 * 3  # micro-batch x seq x vocab / TP, fp32, three copies: unchanged
    acts = {
        name: estimate(c, 4096, 2, 1, 1, False, sp)["activations"] - logits
        for name, c, sp in (("plain", plain, False), ("sp", plain, True), ("full", full, False))
    }
    assert acts["sp"] * 2 == acts["plain"]
    # 13 layers (12 + the embedding's share) keep 68 fp32 bytes per token and unit; full recompute
    # keeps their 4-byte inputs and one layer's 68.
    assert acts["full"] * 68 * 13 == acts["plain"] * (13 * 4 + 68)
