"""Growth operators, PROP-alpha and partitions against the hand-worked examples of docs/method.md §3, §4."""

import math

import pytest

from grow_megatron.growth.operators import bottom, get_operator, lidas, midas, top
from grow_megatron.growth.partition import balanced_split, transfer_plan
from grow_megatron.growth.schedule import MAX_ALPHA, make_plan, prop_alpha, steps_for_every_stage


@pytest.mark.parametrize(
    "L,b,mid,lid",
    [
        (4, 4, [0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 0, 1, 2, 3]),
        (8, 4, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]),
        (12, 4, list(range(8)) + [4, 5, 6, 7, 8, 9, 10, 11], list(range(8)) + [4, 5, 6, 7, 8, 9, 10, 11]),
        (6, 3, [0, 1, 2, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 1, 2, 3, 4, 5]),
    ],
)
def test_worked_source_maps(L, b, mid, lid):
    assert list(midas(L, b).source_map) == mid
    assert list(lidas(L, b).source_map) == lid


def test_odd_block_count_midas_equals_lidas():
    # docs/method.md §3: "MIDAS and LIDAS coincide for an odd number of blocks".
    for b in (2, 3, 4):
        for n in (1, 3, 5):
            assert midas(n * b, b).source_map == lidas(n * b, b).source_map


def test_stable_identity_and_new_positions():
    g = lidas(8, 4)

    def position_of_old(i):  # old layer i stays below the insertion point, moves up b above it
        return i if i < g.insert_at else i + g.block_size

    # Old layers keep identity: their position maps back to themselves in the source map.
    for i in range(8):
        assert g.source_map[position_of_old(i)] == i
    assert g.new_positions == (6, 7, 8, 9)
    assert sorted(set(range(12)) - set(g.new_positions)) == sorted(position_of_old(i) for i in range(8))


def test_stacking_variants():
    assert list(top(8, 4).source_map) == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]
    assert list(bottom(8, 4).source_map) == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]
    fp = get_operator("lidas", function_preserving=True)(8, 4)
    assert fp.zero_outputs and fp.source_map == lidas(8, 4).source_map


def test_bad_operator_arguments():
    with pytest.raises(ValueError, match="not a whole number of blocks"):
        midas(10, 4)
    with pytest.raises(ValueError):
        lidas(2, 4)


def test_prop1_worked_example():
    assert prop_alpha(8, 170000, 1) == [4722, 9444, 14167, 18889, 23611, 28333, 33056, 37778]


@pytest.mark.parametrize("k,T,alpha", [(3, 10, 1), (5, 1001, 2), (8, 7, 1), (4, 999, 0.5)])
def test_prop_sums_exactly(k, T, alpha):
    steps = prop_alpha(k, T, alpha)
    assert sum(steps) == T and len(steps) == k
    assert steps == sorted(steps)  # alpha > 0: later stages never shorter


def test_plan_depths():
    plan = make_plan(12, 4, 60, lidas)
    assert plan.stage_steps == (10, 20, 30)
    assert plan.boundaries == (10, 30)
    assert [plan.depth_at(s) for s in (0, 9, 10, 29, 30, 1000)] == [4, 4, 8, 8, 12, 12]
    assert [g.old_depth for g in plan.growths] == [4, 8]


def test_balanced_split():
    assert balanced_split(12, 2) == (6, 6)
    assert balanced_split(12, 4) == (3, 3, 3, 3)
    for L in range(4, 30):
        for P in range(1, 5):
            if L >= P:
                s = balanced_split(L, P)
                assert sum(s) == L and max(s) - min(s) <= 1
    with pytest.raises(ValueError, match="at least one layer"):
        balanced_split(3, 4)


def test_transfer_plan_moves_between_stages():
    g = midas(8, 4)  # [0,1,2,3, 0,1,2,3, 4,5,6,7], split (4,4) -> (6,6)
    moves = transfer_plan(g, balanced_split(8, 2), balanced_split(12, 2))
    assert [m.dst_stage for m in moves] == [0] * 6 + [1] * 6
    # Position 5 holds a copy of layer 1: stage 0 -> stage 0, local.
    assert moves[5].src_layer == 1 and moves[5].local and moves[5].is_new
    # Position 6 holds a copy of layer 2, which lives on stage 0 but is needed on stage 1.
    assert moves[6].src_layer == 2 and (moves[6].src_stage, moves[6].dst_stage) == (0, 1)
    # Old layer 4 keeps its identity and its stage (1) at position 8.
    assert moves[8].src_layer == 4 and moves[8].local and not moves[8].is_new


def test_transfer_plan_interleaved_stages():
    """PP=2 x 2 virtual stages: stage s runs on rank s mod 2, so rank 0 holds stages 0 and 2."""
    g = lidas(4, 4)  # [0,1,2,3, 0,1,2,3] (docs/method.md §3), split (1,1,1,1) -> (2,2,2,2)
    moves = transfer_plan(g, balanced_split(4, 4), balanced_split(8, 4), pp=2)
    assert [m.dst_stage for m in moves] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [m.dst_rank for m in moves] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [m.src_rank for m in moves] == [0, 1, 0, 1, 0, 1, 0, 1]
    # Position 4 copies layer 0: old stage 0 -> new stage 2, another chunk of the same rank.
    assert (moves[4].src_stage, moves[4].dst_stage) == (0, 2) and moves[4].local
    # Position 2 keeps layer 2, which moves from stage 2 (rank 0) to stage 1 (rank 1).
    assert (moves[2].src_stage, moves[2].dst_stage, moves[2].local) == (2, 1, False)
    with pytest.raises(ValueError, match="interleave"):
        transfer_plan(g, (1, 1, 2), (3, 3, 2), pp=2)


@pytest.mark.parametrize("k", [2, 3, 8])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.5, 3.0, MAX_ALPHA])
def test_steps_for_every_stage_suffice(k, alpha):
    need = steps_for_every_stage(k, alpha)
    assert need == math.ceil(sum(i**alpha for i in range(1, k + 1)))  # docs/method.md §4's denominator
    assert min(prop_alpha(k, need, alpha)) >= 1
    assert min(prop_alpha(k, need * 3 + 1, alpha)) >= 1


def test_prop_alpha_refuses_exponents_beyond_the_bound():
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 10\]"):
        prop_alpha(3, 100, 1e300)
