"""DP-sharded checkpoints (engine/checkpoint/dp_shards.py): each data-parallel rank writes and reads only
its own flat range of every parameter's weights, fp32 main copy and AdamW moments."""

import json
import os

import pytest
import torch

from grow_megatron.engine.checkpoint.dp_shards import param_pieces, pieces, row_segments
from make_v1_checkpoint import batch as fixture_batch  # tests/data (setup.cfg pythonpath)
from make_v1_checkpoint import spec as fixture_spec

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "ckpt_v1", "step_00000002")


def _place(pcs, global_shape):
    """The global tensor the pieces describe (NaN where none wrote)."""
    out = torch.full(global_shape, float("nan"))
    for sh in pcs:
        out[tuple(slice(o, o + n) for o, n in zip(sh.global_offset, sh.local_shape))] = sh.data
    return out


def _cuts(numel, ranks, seed):
    g = torch.Generator().manual_seed(seed)
    inner = sorted(torch.randint(0, numel + 1, (ranks - 1,), generator=g).tolist())
    return list(zip([0] + inner, inner + [numel]))


@pytest.mark.parametrize("shape,seed", [((5, 7), 0), ((5, 7), 1), ((3, 4), 2), ((9,), 3)])
def test_pieces_of_dp_ranges_tile_the_tensor(shape, seed):
    """Layer 1 of 3, TP rank 1 of 2 on the last axis: every rank's range, cut anywhere, becomes
    at most three rectangles (views of its range) that put each element where the layer-stacked
    TP-global tensor has it, and the ranks together cover it exactly once."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    local = torch.arange(float(torch.Size(shape).numel())).view(shape)
    tp_axis = len(shape) - 1
    sh = ShardedTensor.from_rank_offsets("k", local, (0, 1, 3), (tp_axis + 1, 1, 2), prepend_axis_num=1)
    expected = torch.full(sh.global_shape, float("nan"))
    expected[1, ..., shape[-1] :] = local
    cover = torch.zeros(sh.global_shape)
    for s, e in _cuts(local.numel(), 4, seed):
        flat = local.view(-1)[s:e]
        pcs = param_pieces(sh, local, flat, s)
        assert len(pcs) <= 3 and sum(p.data.numel() for p in pcs) == e - s
        assert all(p.data.data_ptr() >= flat.data_ptr() for p in pcs) if pcs else True  # views, not copies
        got = _place(pcs, sh.global_shape)
        written = ~got.isnan()
        assert torch.equal(got[written], expected[written])
        cover += written.float()
    assert torch.equal(cover, (~expected.isnan()).float())


def test_gated_fc1_factory_rows_go_to_gate_and_up_halves():
    """megatron stores the TP-local fc1 [gate; up] as gate rows then up rows of the TP-global
    tensor: rank 1 of 2 with 2 gate + 2 up rows puts them at global rows 2-3 and 6-7."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

    local = torch.arange(12.0).view(4, 3)
    factory = apply_swiglu_sharded_factory(ShardedTensor.from_rank_offsets("fc1", local, (0, 1, 2)), ())
    segs = row_segments(factory, local)
    assert [(s.row0, s.rows, s.offset[0]) for s in segs] == [(0, 2, 2), (2, 2, 6)]
    got = _place(pieces(segs, local.view(-1)[1:11], 1, 3, "fc1", 0), (8, 3))
    assert torch.equal(got[2:4].reshape(-1)[1:], local[:2].reshape(-1)[1:])
    assert torch.equal(got[6:8].reshape(-1)[:-1], local[2:].reshape(-1)[:-1])
    assert got[[0, 1, 4, 5]].isnan().all()


def test_first_format_checkpoint_resumes_exactly(engine_env):
    """tests/data/ckpt_v1 was written by the code before this format (whole optimizer tensors
    per slice): it loads, and the next two steps give the losses the uninterrupted run had."""
    from grow_megatron.engine.build import build_engine, train_step
    from grow_megatron.engine.checkpoint import load_checkpoint

    with open(os.path.join(os.path.dirname(FIXTURE), "expected_losses.json")) as f:
        expected = json.load(f)
    e = build_engine(fixture_spec(), 2, init_weights=False)
    load_checkpoint(e, FIXTURE)
    assert [train_step(e, [fixture_batch(s)], 1e-2)["loss"] for s in (2, 3)] == expected


def _global_key(name):
    """(layer or None, checkpoint key without prefix) of a single-chunk parameter name."""
    if name.startswith("decoder.layers."):
        _, _, i, rest = name.split(".", 3)
        return int(i), "decoder.layers." + rest
    return None, name


# --- a 4-rank data-parallel save (one spawn of 4 processes) ---------------------------------


def _dp4_model():
    from grow_megatron.config.model import ModelConfig
    from grow_megatron.config.training import OptimConfig
    from grow_megatron.engine.resolve import engine_spec

    m = ModelConfig(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=96,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=128,
        seq_length=8,
    )
    return engine_spec(m, 128, optim=OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=0))


def _dp4_worker(rank, out):
    from megatron.core import parallel_state

    from grow_megatron.bench.accounting import allocation_peak, count_comm, tensor_bytes
    from grow_megatron.engine.build import build_engine, train_step
    from grow_megatron.engine.checkpoint import load_checkpoint, read_global_tensors, save_checkpoint
    from grow_megatron.engine.checkpoint.optim_state import gather_param_state, local_range, local_state
    from grow_megatron.engine.distributed import device_context, init_distributed
    from grow_megatron.engine.grow import grow
    from grow_megatron.growth.operators import lidas

    with device_context():
        init_distributed(1, 1, seed=5)
        assert parallel_state.get_data_parallel_world_size() == 4
        torch.manual_seed(0)
        e = build_engine(_dp4_model(), 2)
        g = torch.Generator().manual_seed(rank)
        for _ in range(2):
            t = torch.randint(0, 128, (2, 9), generator=g)
            train_step(
                e,
                [
                    {
                        "tokens": t[:, :-1],
                        "labels": t[:, 1:],
                        "loss_mask": torch.ones(2, 8),
                        "position_ids": torch.arange(8).expand(2, 8),
                    }
                ],
                1e-2,
            )
        # Reference for the single-process load: the whole state, assembled by all-reduce.
        ref = {n: gather_param_state(e.optimizer, p) for n, p in e.named_parameters()}
        if rank == 0:
            torch.save(ref, os.path.join(out, "ref.pt"))
        del ref
        mine = {n: local_range(e.optimizer, p) for n, p in e.named_parameters()}
        params = dict(e.named_parameters())
        written = sum((r[1] - r[0]) * (params[n].element_size() + 12) for n, r in mine.items() if r)
        with count_comm() as comm, allocation_peak() as mem:
            ckpt = save_checkpoint(e, os.path.join(out, "ckpt"), 2, {})
        # Back at DP=4 into a fresh engine: every rank's range equals what it saved, bit for bit.
        e2 = build_engine(_dp4_model(), 2, init_weights=False)
        load_checkpoint(e2, ckpt)
        for (n, p), (_, p2) in zip(e.named_parameters(), e2.named_parameters()):
            assert torch.equal(p, p2), n
            a, b = local_state(e.optimizer, p), local_state(e2.optimizer, p2)
            assert (a is None) == (b is None), n
            for k in a or {}:
                assert torch.equal(a[k], b[k]), (n, k)
        # Growth at DP=4 (one all-reduce per layer): every position holds its source's state, bit
        # for bit, as assembled by the per-parameter all-reduce.
        before = {n: gather_param_state(e2.optimizer, p) for n, p in e2.named_parameters()}
        growth = lidas(2, 2)
        e3 = grow(e2, growth)
        for n, p in e3.named_parameters():
            layer, key = _global_key(n)
            src = n if layer is None else f"decoder.layers.{growth.source_map[layer]}.{key[len('decoder.layers.') :]}"
            st = gather_param_state(e3.optimizer, p)
            for k in st:
                assert torch.equal(st[k], before[src][k]), (n, k)
        # The first format at DP=4: each rank's ranges, assembled, equal the whole tensors.
        f = build_engine(fixture_spec(), 2, init_weights=False)
        load_checkpoint(f, FIXTURE)
        whole = read_global_tensors(FIXTURE) if rank == 0 else None
        for n, p in f.named_parameters():
            st = gather_param_state(f.optimizer, p)
            if rank == 0:
                layer, key = _global_key(n)
                for k in ("param", "exp_avg", "exp_avg_sq"):
                    t = whole[f"optimizer.{k}.model.{key}"]
                    assert torch.equal(st[k], t[layer] if layer is not None else t), (n, k)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
            json.dump(
                {
                    "peak": mem["peak"],
                    "written": written,
                    "state_bytes": 12 * sum(p.numel() for p in params.values()),
                    "max_param_state": 12 * max(p.numel() for p in params.values()),
                    "tensor_comm": tensor_bytes(comm),
                    "comm": dict(comm),
                },
                fh,
            )


def test_dp4_save_writes_only_each_ranks_range(tmp_path):
    """DP=4: a save adds at most what the rank writes, its DP share of the slice's weights and
    state, plus one parameter's state (the old save gathered the whole state on every rank),
    and sends no tensor collective; it reloads at DP=4 bit for bit and in one process equals
    the whole state assembled by all-reduce. Growth at DP=4 copies every layer's state bit for
    bit, and the first format loads at DP=4 too."""
    from dist_helpers import run_ranks
    from grow_megatron.engine.build import build_engine
    from grow_megatron.engine.checkpoint import (
        gather_param_state,
        latest_checkpoint,
        load_checkpoint,
        read_global_tensors,
    )
    from grow_megatron.engine.distributed import device_context, init_distributed

    run_ranks(4, _dp4_worker, str(tmp_path), out_dir=str(tmp_path))
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(4)]
    for r in ranks:
        # Plans and metadata go as pickled objects; the only tensor is megatron's 4-byte flag.
        assert r["tensor_comm"] <= 8, r["comm"]
        assert r["peak"] <= r["written"] + r["max_param_state"], r
        assert r["written"] < 0.3 * (r["state_bytes"] * 16 / 12)  # a quarter of the slice, give or take the cuts
    ref = torch.load(tmp_path / "ref.pt")
    ckpt = latest_checkpoint(str(tmp_path / "ckpt"))
    # Each rank digested the shard files it wrote; the manifest equals one process digesting
    # the whole directory.
    from grow_megatron.engine.checkpoint.integrity import MANIFEST, _files, digest_files, rank_shard_files

    assert all(rank_shard_files(ckpt, r) for r in range(4))
    manifest = json.load(open(os.path.join(ckpt, MANIFEST)))["files"]
    assert manifest == digest_files(ckpt, _files(ckpt))
    # The offline reader (grow, convert, eval, analysis) assembles whole tensors from the pieces.
    whole = read_global_tensors(ckpt)
    with device_context():
        init_distributed(1, 1, seed=0)
        e = build_engine(_dp4_model(), 2, init_weights=False)
        load_checkpoint(e, ckpt)
        for n, p in e.named_parameters():
            st = gather_param_state(e.optimizer, p)
            layer, key = _global_key(n)
            for k in st:
                assert torch.equal(st[k], ref[n][k]), (n, k)
                t = whole[f"optimizer.{k}.model.{key}"]
                assert torch.equal(t[layer] if layer is not None else t, ref[n][k]), (n, k)
            t = whole[f"model.{key}"]
            assert torch.equal(t[layer] if layer is not None else t, ref[n]["param"]), n
