"""Growth by ownership (issue 24): the plan of who sends which piece of the optimizer state to
whom, against an element-by-element reference, and the grown engine at DP=2 / DP=4 / PP2 x DP2
/ TP2 x DP2 against the source map applied to the whole state (what the growth did before it
moved only ranges: an all-reduce of every layer's whole state), bit for bit, with the bytes."""

import json
import os
import random

import pytest
import torch

from grow_megatron.growth.ownership import Piece, dp_spans, exchange_sizes, ownership_plan


def _owner_of_each_element(spans, n):
    owner = [None] * n
    for r, s in enumerate(spans):
        for i in range(*(s or (0, 0))):
            owner[i] = r
    return owner


@pytest.mark.parametrize(
    "start,end,offset,numel,dp",
    [(0, 10, 0, 12, 4), (5, 17, 0, 24, 4), (100, 164, 96, 128, 2), (7, 8, 0, 8, 8), (0, 30, 0, 30, 1)],
)
def test_dp_spans_are_megatrons_equal_bucket_parts(start, end, offset, numel, dp):
    spans = dp_spans(start, end, offset, numel, dp)
    part = numel // dp
    # Reference: element e of the parameter sits at start + e of the buffer, in DP part
    # (start + e - offset) // part of its bucket.
    assert _owner_of_each_element(spans, end - start) == [(start + e - offset) // part for e in range(end - start)]


def test_dp_spans_refuse_what_megatron_never_builds():
    with pytest.raises(ValueError, match="does not split into 4 equal"):
        dp_spans(0, 10, 0, 10, 4)
    with pytest.raises(ValueError, match="outside its bucket"):
        dp_spans(0, 20, 4, 12, 2)


def _random_spans(rng, n, dp):
    """A partition of [0, n) over dp ranks in rank order, some ranks empty (a bucket's cuts)."""
    cuts = sorted(rng.randint(0, n) for _ in range(dp - 1))
    bounds = [0] + cuts + [n]
    return tuple((a, b) if b > a else None for a, b in zip(bounds, bounds[1:]))


@pytest.mark.parametrize("seed", range(30))
def test_plan_delivers_every_new_element_from_its_old_owner(seed):
    rng = random.Random(seed)
    dp = rng.choice([1, 2, 3, 4, 8])
    sizes = [rng.randint(1, 40) for _ in range(rng.randint(1, 5))]
    old = [_random_spans(rng, n, dp) for n in sizes]
    new = [_random_spans(rng, n, dp) for n in sizes]
    plan = ownership_plan(old, new)
    assert list(plan) == sorted(plan)
    got = {}
    for p in plan:
        for e in range(p.start, p.end):
            assert (p.param, e) not in got, "an element delivered twice"
            got[p.param, e] = (p.src, p.dst)
    want = {
        (i, e): (o, w)
        for i, n in enumerate(sizes)
        for e, (o, w) in enumerate(zip(_owner_of_each_element(old[i], n), _owner_of_each_element(new[i], n)))
    }
    assert got == want
    for rank in range(dp):
        send, recv = exchange_sizes(plan, rank, dp)
        assert send[rank] == recv[rank] == 0
        assert sum(send) == sum(1 for o, w in want.values() if o == rank != w)
        assert sum(recv) == sum(1 for o, w in want.values() if w == rank != o)


def test_unchanged_owners_mean_no_traffic():
    spans = [((0, 6), (6, 10), None), (None, (0, 3), (3, 8))]
    plan = ownership_plan(spans, spans)
    assert all(p.src == p.dst for p in plan)
    assert plan[0] == Piece(0, 0, 0, 0, 6)


@pytest.mark.parametrize(
    "old,new,match",
    [
        ([((0, 4), (5, 8))], [((0, 4), (4, 8))], "does not continue"),
        ([((0, 4), (4, 8))], [((0, 4), (4, 9))], "8 elements before, 9 after"),
        ([((0, 4), (4, 8))], [((0, 8),)], "2 DP ranks before, 1 after"),
        ([((0, 4),)], [], "1 source parameters for 0"),
    ],
)
def test_plan_refuses_layouts_that_are_not_partitions(old, new, match):
    with pytest.raises(ValueError, match=match):
        ownership_plan(old, new)


# ---- the executor on gloo ranks -----------------------------------------------------------

V, S = 96, 8


def _spec(tp, pp, bf16):
    from engine_helpers import narrow_model
    from grow_megatron.config.training import OptimConfig
    from grow_megatron.engine.resolve import engine_spec

    m = narrow_model(12, V, S)
    return engine_spec(
        m, V, optim=OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=0), bf16=bf16, use_kernels=False, tp=tp, pp=pp
    )


def _states(engine, tag):
    """{(tp rank, where, name): state} of this rank: layers by global position, the rest by
    pipeline rank; each state assembled whole from the DP ranges (the reference's way)."""
    from megatron.core import parallel_state

    from grow_megatron.engine.checkpoint import gather_param_state

    tp, pp = parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_rank()
    out = {}
    layer_ids = set()
    for pos, layer in engine.layers_by_position().items():
        for n, p in layer.named_parameters():
            layer_ids.add(id(p))
            out[f"{tag}|{tp}|L{pos}|{n}"] = {**gather_param_state(engine.optimizer, p), "weight": p.detach().clone()}
    for n, p in engine.chunks[0].named_parameters():
        if id(p) not in layer_ids:
            out[f"{tag}|{tp}|P{pp}|{n}"] = {**gather_param_state(engine.optimizer, p), "weight": p.detach().clone()}
    return out


def _grow_worker(rank, out, tp, pp, bf16):
    from megatron.core import parallel_state

    from engine_helpers import random_batch
    from grow_megatron.bench.accounting import count_comm, tensor_bytes
    from grow_megatron.engine.build import build_engine, train_step
    from grow_megatron.engine.distributed import device_context, init_distributed
    from grow_megatron.engine.grow import grow
    from grow_megatron.growth.operators import get_operator

    with device_context():
        init_distributed(tp, pp, seed=3)
        dp_rank = parallel_state.get_data_parallel_rank()
        torch.manual_seed(0)
        e = build_engine(_spec(tp, pp, bf16), 4)
        states, comm = {}, []
        # Two growths: a live LIDAS one, then a host-staged, function-preserving MIDAS one, each
        # after real steps (moments non-zero, different data on each DP rank).
        for i, (op, staged) in enumerate(
            [(get_operator("lidas"), False), (get_operator("midas", function_preserving=True), True)]
        ):
            train_step(e, [random_batch(100 * i + dp_rank, V, S)], 1e-2)
            states.update(_states(e, f"before{i}"))
            with count_comm() as c:
                e = grow(e, op(e.depth, 4), host_staging=staged)
            comm.append(
                {
                    "bytes": tensor_bytes(c),
                    "calls": sum(v for k, v in c.items() if k.endswith("#calls")),
                    "slice": sum(p.numel() for p in e.chunks[0].parameters()),
                }
            )
            states.update(_states(e, f"after{i}"))
        assert torch.isfinite(torch.tensor(train_step(e, [random_batch(999, V, S)], 1e-2)["loss"]))
        if dp_rank == 0:  # the whole state is the same on every DP rank
            torch.save(states, os.path.join(out, f"states{rank}.pt"))
        with open(os.path.join(out, f"comm{rank}.json"), "w") as f:
            json.dump({"dp": parallel_state.get_data_parallel_world_size(), "growths": comm}, f)


@pytest.mark.parametrize(
    "world,tp,pp,bf16", [(4, 1, 1, True), (4, 1, 2, False), (4, 2, 1, False)], ids=["dp4-bf16", "pp2-dp2", "tp2-dp2"]
)
def test_grown_state_equals_the_source_map_of_the_whole_state(tmp_path, world, tp, pp, bf16):
    from dist_helpers import run_ranks
    from grow_megatron.engine.checkpoint.keys import OUTPUT_PROJECTIONS
    from grow_megatron.growth.operators import get_operator

    run_ranks(world, _grow_worker, str(tmp_path), tp, pp, bf16, out_dir=str(tmp_path))
    states = {}
    for f in os.listdir(tmp_path):
        if f.startswith("states"):
            states.update(torch.load(tmp_path / f))
    growths = [get_operator("lidas")(4, 4), get_operator("midas", function_preserving=True)(8, 4)]
    seen = set()
    for key, st in states.items():
        tag, tprank, where, name = key.split("|")
        if not tag.startswith("after"):
            continue
        i = int(tag[-1])
        g = growths[i]
        src = where if where[0] == "P" else f"L{g.source_map[int(where[1:])]}"
        ref = states[f"before{i}|{tprank}|{src}|{name}"]
        zeroed = g.zero_outputs and where[0] == "L" and int(where[1:]) in g.new_positions and name in OUTPUT_PROJECTIONS
        for k in ("param", "exp_avg", "exp_avg_sq", "weight"):
            want = torch.zeros_like(ref[k]) if zeroed and k in ("param", "weight") else ref[k]
            assert torch.equal(st[k], want), (key, k)
        seen.add((i, tprank, where))
    # Every position of both grown models, and every stage's other parameters, on every TP rank.
    assert seen == {
        (i, str(t), w)
        for i, g in enumerate(growths)
        for t in range(tp)
        for w in [f"L{j}" for j in range(g.new_depth)] + [f"P{r}" for r in range(pp)]
    }
    assert any(states[k]["exp_avg_sq"].abs().sum() > 0 for k in states)
    # Bytes: the old executor all-reduced every parameter's whole state, 2 (DP-1)/DP x 12 bytes
    # per parameter of the grown slice (ring cost); each rank now receives only pieces of its
    # new ranges, and sends at most its old ranges (plus layers that change stage, whole).
    for f in os.listdir(tmp_path):
        if f.startswith("comm"):
            rec = json.load(open(tmp_path / f))
            dp = rec["dp"]
            for gr in rec["growths"]:
                old = 2 * (dp - 1) / dp * 12 * gr["slice"]
                limit = old / 3 if pp == 1 else old / 1.5  # PP: layers crossing stages carry their weights
                assert gr["bytes"] <= limit, (f, gr, old)
