"""Faults around checkpoints (issue 12): a kill at every point of a re-save, real kills and
group signals (no helper processes, no orphans), torchrun launcher death, disk full, corrupted
and hand-edited checkpoints, reuse of a run directory, growth checkpoints kept across resumes.

Faults go through the named hooks of grow_megatron.engine.faults (GROW_MEGATRON_FAULT),
never through timing. In-process tests use the `raise` action (an InjectedFault skips every
`except Exception`, so the disk holds what a kill at that point leaves); the subprocess tests
kill for real.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

from engine_helpers import assert_same_tensors, micro_config, micro_overrides
from grow_megatron.config.base import CheckpointError, ConfigError, RunEnvironmentError
from grow_megatron.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    read_global_tensors,
    read_meta,
    verify_checkpoint,
    writer,
)
from grow_megatron.engine.faults import ENV, InjectedFault
from grow_megatron.training.loop import train

# micro_config grows before steps 2 and 5; with save_at_growth each growth writes step_2 / step_5;
# the reference also keeps its state after step 7, where the resumed runs below stop.
SAVES = {"checkpoint.save_at_growth": True}
STOP = 7
STATIC = {"train.steps": 6, "growth.operator": "none", "growth.grow_steps": "null", "model.num_layers": 4}
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_runner.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Losses, and tensors (weights and AdamW state) after step STOP and after the last step,
    of the uninterrupted run."""
    d = tmp_path_factory.mktemp("ref")
    res = train(micro_config(d, **SAVES, **{"checkpoint.interval": STOP}))
    root = os.path.join(d, "checkpoints")
    return (
        res.losses,
        read_global_tensors(latest_checkpoint(root)),
        read_global_tensors(os.path.join(root, f"step_{STOP:08d}")),
    )


@pytest.fixture(scope="module")
def at_step5(tmp_path_factory):
    """A run stopped at step 5, right before its second growth: resuming it re-saves step_5
    (as a growth checkpoint) over the step_5 written by the stop."""
    d = tmp_path_factory.mktemp("at5")
    first = train(micro_config(d, **SAVES), stop_at=5)
    return d, first.losses


def _copy(src, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(src, run)
    return run, str(run / "checkpoints")


def test_resave_keeps_a_complete_copy_at_every_instant(reference, at_step5, tmp_path, monkeypatch):
    """Every rename and removal of the resumed run's saves is watched: before and after each,
    `latest` resolves to a readable checkpoint no older than the last one seen (the old code
    removed step_5 before renaming its replacement into place).

    The same run checks that growth checkpoints survive resumes: keep_last=1 prunes periodic
    checkpoints only, so step_2 (written by the earlier process) and step_5 stay, also after
    a re-run with nothing to do."""
    run, root = _copy(at_step5[0], tmp_path)
    floor = [5]

    def check(what):
        path = latest_checkpoint(root)
        assert path is not None, what
        step = read_meta(path)["step"]
        assert step >= floor[0], f"{what}: latest resolves to step {step}, a complete step {floor[0]} existed"
        floor[0] = step

    def watched(fn):
        def wrapper(*a, **k):
            check(f"before {fn.__name__}{a}")
            out = fn(*a, **k)
            check(f"after {fn.__name__}{a}")
            return out

        return wrapper

    extra = {**SAVES, "checkpoint.interval": 3, "checkpoint.keep_last": 1}
    monkeypatch.setattr(writer.shutil, "rmtree", watched(shutil.rmtree))
    monkeypatch.setattr(writer.os, "replace", watched(os.replace))
    second = train(micro_config(run, **extra))
    monkeypatch.undo()
    assert second.start_step == 5 and floor[0] == 12
    assert {**at_step5[1], **second.losses} == reference[0]

    kept = ["step_00000002", "step_00000005", "step_00000012"]
    assert list_checkpoints(root) == kept
    assert [read_meta(os.path.join(root, d)).get("growth_checkpoint") for d in kept] == [True, True, False]
    again = train(micro_config(run, **extra))
    assert not again.losses
    assert list_checkpoints(root) == kept


@pytest.mark.parametrize("point", ["save.written", "save.sealed", "save.swapped", "save.latest", "save.aside"])
def test_kill_at_each_point_of_a_resave_resumes_exactly(reference, at_step5, tmp_path, monkeypatch, point):
    run, root = _copy(at_step5[0], tmp_path)
    if point == "save.aside":  # the fallback where the OS cannot exchange two directories
        monkeypatch.setattr(writer, "_exchange", lambda a, b: False)
    monkeypatch.setenv(ENV, f"{point}@5:raise")
    with pytest.raises(InjectedFault):
        train(micro_config(run, **SAVES))
    # What the kill left: `latest` resolves to a complete, verified step 5.
    left = latest_checkpoint(root)
    assert read_meta(left)["step"] == 5
    verify_checkpoint(left)
    monkeypatch.delenv(ENV)
    second = train(micro_config(run, **SAVES), stop_at=STOP)
    assert second.start_step == 5
    assert {**at_step5[1], **second.losses} == {s: v for s, v in reference[0].items() if s < STOP}
    assert_same_tensors(read_global_tensors(latest_checkpoint(root)), reference[2])
    assert not [d for d in os.listdir(root) if ".tmp-" in d or ".old-" in d]


def _start(args, fault=None, torchrun=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    # Not this process's (single-rank) torch.distributed rendezvous, which in-process runs set.
    for k in (ENV, "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if fault:
        env[ENV] = fault
    cmd = [sys.executable, RUNNER, *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", RUNNER, *args]
    # Its own process group (session), as a job under Slurm or a shell pipeline has.
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _group(pgid):
    """Live (non-zombie) processes of a process group."""
    alive = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                alive.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


def _wait_group_gone(pgid, timeout=120):
    """The processes of the group still alive after `timeout` s (killed, so no test leaks them)."""
    gone, alive = psutil.wait_procs(_group(pgid), timeout=timeout)
    for p in alive:
        p.kill()
    return alive


@pytest.fixture(scope="module")
def static_reference(tmp_path_factory):
    """Losses of the uninterrupted 6-step static run (4 layers: the subprocess tests' config)."""
    return train(micro_config(tmp_path_factory.mktemp("static_ref"), **STATIC)).losses


def test_sigkill_leaves_no_process_and_group_sigterm_stops_cleanly(static_reference, tmp_path):
    """A real SIGKILL in the middle of a save (after an earlier save, when megatron's own
    writer had started its helper processes), then SIGTERM to the whole process group: no
    process outlives the trainer, the group signal stops it cleanly with a checkpoint (as
    SIGTERM to the trainer alone does), and the run resumed to the end has the uninterrupted
    losses bit for bit."""
    extra = {**STATIC, "checkpoint.interval": 2}
    root = str(tmp_path / "checkpoints")
    p = _start(micro_overrides(tmp_path, **extra), fault="save.written@4:kill")
    _, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, err[-3000:]
    assert not _wait_group_gone(p.pid, timeout=10), "processes outlived the SIGKILLed trainer"
    assert read_meta(latest_checkpoint(root))["step"] == 2  # step_4 was being written

    p = _start(micro_overrides(tmp_path, **extra), fault="step.end@3:term-group")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert not _wait_group_gone(p.pid, timeout=10)
    second = json.loads(out.strip().splitlines()[-1])
    assert (second["start"], second["end"]) == (2, 4)
    verify_checkpoint(latest_checkpoint(root))
    assert read_meta(latest_checkpoint(root))["step"] == 4

    third = train(micro_config(tmp_path, **extra))
    assert third.start_step == 4
    got = {**{int(k): v for k, v in second["losses"].items()}, **third.losses}
    assert got == {s: v for s, v in static_reference.items() if s >= 2}


def test_sigkilled_trainer_takes_its_async_writer_with_it(tmp_path):
    """checkpoint.async_save: the forked writer of the step-2 save SIGKILLs the trainer before
    writing and then waits (fault point save.writer): only the kernel's parent-death signal can
    end it, and no process of the group is left (nor a helper process of megatron's writer);
    the unfinished save never becomes a checkpoint."""
    p = _start(
        micro_overrides(tmp_path, **STATIC, **{"checkpoint.interval": 2, "checkpoint.async_save": "on"}),
        fault="save.writer:kill-parent-wait",
    )
    _, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, err[-3000:]
    assert not _wait_group_gone(p.pid, timeout=10), "the async writer outlived the SIGKILLed trainer"
    assert latest_checkpoint(str(tmp_path / "checkpoints")) is None


TORCHRUN = {**STATIC, "checkpoint.interval": 1}


def test_torchrun_group_sigterm_stops_both_ranks_cleanly(tmp_path):
    """kill -TERM -PGID of a 2-rank torchrun job: the agent forwards a second SIGTERM to the
    workers; both ranks stop after the same step and write one complete checkpoint there."""
    p = _start(micro_overrides(tmp_path, **TORCHRUN), fault="step.end@1:term-group", torchrun=True)
    out, err = p.communicate(timeout=300)
    assert not _wait_group_gone(p.pid, timeout=10)
    assert "BrokenPipeError" not in err and "Traceback" not in err.split("SignalException")[0], err[-3000:]
    latest = latest_checkpoint(str(tmp_path / "checkpoints"))
    assert read_meta(latest)["step"] == 2, err[-3000:]
    verify_checkpoint(latest)
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0, 1]


def test_torchrun_workers_stop_when_the_launcher_dies(tmp_path):
    """SIGKILL of the torchrun agent (after step 1, from rank 0's fault hook): the workers get
    SIGTERM from the kernel (parent-death signal), stop cleanly with a checkpoint and exit,
    instead of training on to step 6 without a launcher. The signal reaches them a moment
    after the agent's death, so they stop after step 2 or 3."""
    p = _start(micro_overrides(tmp_path, **TORCHRUN), fault="step.end@1:kill-parent", torchrun=True)
    p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL
    assert not _wait_group_gone(p.pid, timeout=120), "workers outlived their launcher"
    latest = latest_checkpoint(str(tmp_path / "checkpoints"))
    assert read_meta(latest)["step"] in (2, 3)
    verify_checkpoint(latest)


def test_sigterm_during_the_final_save_lets_it_finish(tmp_path, monkeypatch):
    """SIGTERM while the last checkpoint is being written (the soak found the final save
    outside the loop's handlers: the process died half-way): the save completes."""

    def unhandled(signum, frame):  # what runs if no training handler is installed
        raise RuntimeError("SIGTERM reached the default handler: the run would have been killed")

    before = signal.signal(signal.SIGTERM, unhandled)
    monkeypatch.setenv(ENV, "save.written@6:term")
    try:
        res = train(micro_config(tmp_path, **STATIC))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert res.end_step == 6
    latest = latest_checkpoint(str(tmp_path / "checkpoints"))
    assert read_meta(latest)["step"] == 6
    verify_checkpoint(latest)


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    """A 2-step static run with checkpoints at steps 1 and 2, copied by each test that edits it."""
    d = tmp_path_factory.mktemp("static")
    train(micro_config(d, **STATIC, **{"checkpoint.interval": 1}), stop_at=2)
    return d


def test_disk_full_is_one_line_keeps_last_good_and_cleans_up(static_run, tmp_path, monkeypatch):
    run, root = _copy(static_run, tmp_path)
    good = latest_checkpoint(root)
    cfg = lambda: micro_config(run, **STATIC, **{"checkpoint.interval": 1})  # noqa: E731
    monkeypatch.setenv(ENV, "save.written@3:enospc")
    with pytest.raises(RunEnvironmentError, match="ENOSPC") as err:
        train(cfg())
    msg = str(err.value)
    assert "\n" not in msg and "step_00000003.tmp-" in msg and good in msg
    assert latest_checkpoint(root) == good
    assert not [d for d in os.listdir(root) if ".tmp-" in d]
    # A kill leaves its .tmp-* behind; the next save removes it before writing anything.
    monkeypatch.setenv(ENV, "save.sealed@3:raise")
    with pytest.raises(InjectedFault):
        train(cfg())
    assert [d for d in os.listdir(root) if ".tmp-" in d]
    monkeypatch.setenv(ENV, "save.begin@3:raise")
    with pytest.raises(InjectedFault):
        train(cfg())
    assert not [d for d in os.listdir(root) if ".tmp-" in d]


def test_disk_full_is_found_inside_dcp_failures():
    """Under several ranks DCP reports a rank's write error wrapped in CheckpointException
    (as (exception, traceback) per rank); the ENOSPC must still be recognised."""
    import errno

    from torch.distributed.checkpoint.api import CheckpointException

    full = OSError(errno.ENOSPC, "No space left on device", "/x/__1_0.distcp")
    wrapped = CheckpointException("write failed", {1: (full, "traceback text")})
    assert writer._disk_full(wrapped) is full
    assert writer._disk_full(CheckpointException("other", {0: (OSError(errno.EIO, "I/O error"), "")})) is None


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda m: m.pop("depth"), "depth"),
        (lambda m: m.__setitem__("step", "2"), "step"),
        (lambda m: m.__setitem__("split", 4), "split"),
    ],
    ids=["missing-key", "string-step", "int-split"],
)
def test_hand_edited_meta_is_one_line_naming_the_key(static_run, tmp_path, edit, key):
    run, root = _copy(static_run, tmp_path)
    path = os.path.join(latest_checkpoint(root), "meta.json")
    with open(path) as f:
        meta = json.load(f)
    edit(meta)
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(CheckpointError) as err:
        train(micro_config(run, **STATIC))
    assert f"meta.json: {key} = " in str(err.value) and "\n" not in str(err.value)


def test_corrupted_shard_is_refused_naming_the_file(static_run, tmp_path):
    """64 bytes overwritten inside a tensor shard (same size): every reader refuses, naming it."""
    run, root = _copy(static_run, tmp_path)
    ckpt = latest_checkpoint(root)
    shard = next(f for f in sorted(os.listdir(ckpt)) if f.endswith(".distcp"))
    with open(os.path.join(ckpt, shard), "r+b") as f:
        f.seek(os.path.getsize(os.path.join(ckpt, shard)) // 2)
        f.write(os.urandom(64))
    for read in (lambda: read_global_tensors(ckpt), lambda: train(micro_config(run, **STATIC))):
        with pytest.raises(CheckpointError, match="differs? from what was written") as err:
            read()
        assert os.path.join(os.path.basename(ckpt), shard) in str(err.value)


def test_a_reader_verifies_the_tensors_it_reads(static_run, tmp_path):
    """Shard files are digested per stored tensor piece: a weights reader (convert, eval,
    analyze) checks the weights' bytes, not the optimizer state; a full read checks all."""
    from grow_megatron.convert.native import NativeReader

    run, root = _copy(static_run, tmp_path)
    ckpt = latest_checkpoint(root)
    with open(os.path.join(ckpt, "manifest.json")) as f:
        files = json.load(f)["files"]
    items = [(rel, o, n, key) for rel, e in files.items() for o, n, key, _ in e.get("items", [])]
    assert items and sum(n for _, _, n, _ in items) == sum(e["size"] for rel, e in files.items() if "items" in e)

    def damage(item):
        rel, offset, length, _ = item
        with open(os.path.join(ckpt, rel), "r+b") as f:
            f.seek(offset + length // 2)
            byte = f.read(1)
            f.seek(offset + length // 2)
            f.write(bytes([byte[0] ^ 0xFF]))

    damage(next(i for i in items if i[3].startswith("optimizer.") and i[2] > 64))
    NativeReader(ckpt)  # the weights are intact
    with pytest.raises(CheckpointError, match=r"\(optimizer\..*\) differ from what was written"):
        read_global_tensors(ckpt)
    weight = next(i for i in items if i[3].startswith("model.") and i[2] > 64)
    damage(weight)
    with pytest.raises(CheckpointError, match=rf"{os.path.basename(ckpt)}/{weight[0]}.*\({weight[3]}\) differ") as err:
        NativeReader(ckpt)
    assert "\n" not in str(err.value)


def test_resume_never_refuses_a_used_run_dir_and_fresh_archives_it(static_run, tmp_path):
    run, root = _copy(static_run, tmp_path)
    before = sorted(os.listdir(root))
    with pytest.raises(ConfigError, match="checkpoint.resume = 'never'.*already holds a run.*resume=fresh"):
        train(micro_config(run, **STATIC, **{"checkpoint.resume": "never"}))
    assert sorted(os.listdir(root)) == before  # nothing touched
    res = train(micro_config(run, **STATIC, **{"checkpoint.resume": "fresh"}), stop_at=1)
    assert res.start_step == 0
    (archive,) = [d for d in os.listdir(run) if d.startswith("archive-")]
    assert sorted(os.listdir(run / archive / "checkpoints")) == before
    assert list_checkpoints(root) == ["step_00000001"]
    with open(run / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0]
