"""checkpoint.async_save: training continues while a checkpoint is written (CPU, one process)."""

import os

import pytest
from torch.distributed.checkpoint.api import CheckpointException

from engine_helpers import assert_same_tensors, micro_config, micro_overrides
from grow_megatron.engine.checkpoint import latest_checkpoint, list_checkpoints, read_global_tensors
from grow_megatron.engine.faults import ENV
from grow_megatron.training.loop import train

STATIC = {
    "train.steps": 6,
    "growth.operator": "none",
    "growth.grow_steps": "null",
    "model.num_layers": 4,
    "checkpoint.interval": 2,
    "checkpoint.keep_last": 3,
}


def test_async_checkpoints_hold_the_state_of_their_step(tmp_path):
    """Saves at steps 2 and 4 are written while steps 3-6 run: each holds its own step's
    weights and AdamW state, bit for bit the synchronous run's, and the losses are the same."""
    sync = train(micro_config(tmp_path / "sync", **STATIC))
    asy = train(micro_config(tmp_path / "async", **STATIC, **{"checkpoint.async_save": "on"}))
    assert asy.losses == sync.losses
    roots = [os.path.join(tmp_path, r, "checkpoints") for r in ("sync", "async")]
    assert (
        list_checkpoints(roots[0]) == list_checkpoints(roots[1]) == ["step_00000002", "step_00000004", "step_00000006"]
    )
    for name in ("step_00000002", "step_00000004"):
        assert_same_tensors(*(read_global_tensors(os.path.join(r, name)) for r in roots))
    assert latest_checkpoint(roots[1]).endswith("step_00000006")


def test_killed_async_writer_leaves_previous_checkpoint_latest(tmp_path, monkeypatch):
    cfg = micro_config(tmp_path, **STATIC)
    train(cfg, stop_at=2)  # a synchronous checkpoint at step 2
    root = os.path.join(tmp_path, "checkpoints")
    assert latest_checkpoint(root).endswith("step_00000002")
    monkeypatch.setenv(ENV, "save.writer:exit")
    # The writer of the step-4 save dies; its finalisation (at the next step) reports it on every rank.
    with pytest.raises(CheckpointException) as err:
        train(micro_config(tmp_path, **STATIC, **{"checkpoint.async_save": "on"}))
    assert "exited without writing its shards" in str(next(iter(err.value.failures.values())))
    assert latest_checkpoint(root).endswith("step_00000002")
    assert list_checkpoints(root) == ["step_00000002"]
    assert any(".tmp-" in d for d in os.listdir(root))  # the killed save's files are never read


def test_async_checkpoints_at_dp2_equal_the_synchronous_ones(tmp_path):
    """Two ranks, each forking its own writer: every checkpoint holds what the synchronous run
    saved, bit for bit, and its manifest (digested by the writers) verifies."""
    from dist_helpers import run_world
    from grow_megatron.engine.checkpoint import verify_checkpoint

    sets = {**STATIC, "train.global_batch_size": 4, "train.micro_batch_size": 2}
    for mode in ("off", "on"):
        run_world(2, micro_overrides(tmp_path / mode, **sets, **{"checkpoint.async_save": mode}), str(tmp_path / mode))
    roots = [os.path.join(tmp_path, m, "checkpoints") for m in ("off", "on")]
    assert (
        list_checkpoints(roots[0]) == list_checkpoints(roots[1]) == ["step_00000002", "step_00000004", "step_00000006"]
    )
    for name in list_checkpoints(roots[1]):
        verify_checkpoint(os.path.join(roots[1], name))
        assert not [f for f in os.listdir(os.path.join(roots[1], name)) if f.startswith(".write_result")]
        assert_same_tensors(*(read_global_tensors(os.path.join(r, name)) for r in roots))
    assert not [d for d in os.listdir(roots[1]) if not d.startswith("step_") and d != "latest"]


def test_a_failed_async_writer_says_why_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """The forked writer hits ENOSPC (the fault hook inside it): the trainer reports it as the
    synchronous path does (one line, the partial save removed, the last good checkpoint named)
    instead of 'exited without writing'; any other failure of the writer is named too."""
    from grow_megatron.config.base import RunEnvironmentError
    from grow_megatron.engine.faults import ENV

    cfg = lambda: micro_config(tmp_path, **STATIC, **{"checkpoint.async_save": "on"})  # noqa: E731
    train(micro_config(tmp_path, **STATIC), stop_at=2)
    root = os.path.join(tmp_path, "checkpoints")
    monkeypatch.setenv(ENV, "save.writer:enospc")
    with pytest.raises(RunEnvironmentError, match="ENOSPC") as err:
        train(cfg())
    assert "\n" not in str(err.value) and "step_00000002 stays the last good one" in str(err.value)
    assert list_checkpoints(root) == ["step_00000002"]
    assert not [d for d in os.listdir(root) if ".tmp-" in d]
    monkeypatch.setenv(ENV, "save.writer:raise")
    with pytest.raises(CheckpointException) as err:
        train(cfg())
    assert "checkpoint writer failed: InjectedFault" in str(err.value)
