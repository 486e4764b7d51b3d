"""One trainer per run directory: a second `train` on a used run_dir refuses at once in one line,
touching nothing; the lock dies with its holder (SIGKILL leaves no stale lock)."""

import os
import signal
import socket
import subprocess
import sys

from engine_helpers import micro_config
from grow_megatron.cli import main as cli_main
from grow_megatron.config.run import dump_run_config
from grow_megatron.config.rundir import LOCK_HOLDER as HOLDER_NAME
from grow_megatron.training.loop import train

STATIC = {
    "train.steps": 3,
    "optim.decay_steps": 1,
    "growth.operator": "none",
    "growth.grow_steps": "null",
    "model.num_layers": 4,
}

# A real trainer that, after its step 1, says so and waits for the test (an explicit hook, no timing).
HOLDING_TRAINER = """
import sys
from grow_megatron.config.run import load_run_config
from grow_megatron.training.loop import train

def hold(engine, step, rec):
    if step == 1:
        print("holding", flush=True)
        sys.stdin.readline()

if __name__ == "__main__":
    train(load_run_config(sys.argv[1]), on_step=hold)
"""


def _tree(root: str) -> dict:
    """Every file under root with its size and modification time."""
    return {
        os.path.join(d, f): (os.path.getsize(os.path.join(d, f)), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, files in os.walk(root)
        for f in files
    }


def test_a_second_trainer_refuses_in_one_line_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    cfg = micro_config(tmp_path / "run", **STATIC)
    path = tmp_path / "run.yaml"
    path.write_text(dump_run_config(cfg))
    (tmp_path / "holder.py").write_text(HOLDING_TRAINER)
    # A user's shell (with this session's data cache): not the rendezvous variables that in-process
    # runs of this test session set.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    first = subprocess.Popen(
        [sys.executable, str(tmp_path / "holder.py"), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        for line in first.stdout:
            if line.strip() == "holding":
                break
        before = _tree(cfg.run_dir)
        # Another lr, as when two runs got mixed: it must reach neither config.yaml nor anything else.
        assert cli_main(["train", str(path), "--set", "optim.lr=1e-4"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert (
            f"run_dir = {cfg.run_dir!r}: is in use by another training process (pid {first.pid} on host "
            f"{socket.gethostname()}, since "
        ) in err[0]
        assert _tree(cfg.run_dir) == before
        assert first.poll() is None  # the first trainer is unaffected, still at work
        first.kill()  # SIGKILL: no chance to release anything
        assert first.wait() == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # It died holding the lock (its holder record is still there), yet the lock is free: the next
    # trainer takes the run over and finishes it.
    assert os.path.isfile(os.path.join(cfg.run_dir, HOLDER_NAME))
    res = train(cfg)
    assert res.end_step == 3 and not os.path.exists(os.path.join(cfg.run_dir, HOLDER_NAME))
