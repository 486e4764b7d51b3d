"""The launch scripts (examples/launch_slurm.sbatch, examples/launch_torchrun.sh): their argument
handling with stub srun / scontrol / torchrun on PATH that record what they are given, and
torchrun's elastic restart through the real launcher: a worker killed mid-run (fault injection),
the job restarts it, resumes from the last checkpoint and finishes with the uninterrupted losses."""

import json
import os
import signal
import subprocess
import sys

import pytest

from engine_helpers import micro_overrides
from grow_megatron.engine.faults import ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = os.path.join(ROOT, "examples", "launch_slurm.sbatch")
TORCHRUN = os.path.join(ROOT, "examples", "launch_torchrun.sh")


def _stubs(tmp_path):
    """A bin directory with srun (records, then runs the command after its options), scontrol
    (the job's node list, first node node17) and torchrun (records its arguments)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$STUB_LOG/srun"\n'
        'while [ "$1" != torchrun ]; do shift; done\nexec "$@"\n'
    )
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\n[ "$1 $2 $3" = "show hostnames node[17-18]" ] || exit 3\nprintf "node17\\nnode18\\n"\n'
    )
    (bin_dir / "torchrun").write_text(
        '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$STUB_LOG/torchrun"\n'
        'echo "$TORCH_DISABLE_SHARE_RDZV_TCP_STORE" > "$STUB_LOG/torchrun.env"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _run(script, tmp_path, args, **env):
    bin_dir = _stubs(tmp_path)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM_")
        and k not in ("NPROC", "MAX_RESTARTS", "MASTER_PORT", "RDZV_ID", "NNODES", "NODE_RANK", "MASTER_ADDR")
    }
    base.update(PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(tmp_path), **env)
    return subprocess.run(["bash", script, *args], env=base, capture_output=True, text=True, timeout=60)


def _recorded(tmp_path, name):
    return (tmp_path / name).read_text().splitlines()


def _flag(argv, name):
    return argv[argv.index(name) + 1]


SLURM_ENV = {
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "node[17-18]",
    "SLURM_JOB_ID": "4242",
    "SLURM_GPUS_ON_NODE": "8",
}


def test_slurm_script_runs_one_torchrun_per_node_with_the_jobs_rendezvous(tmp_path):
    r = _run(SLURM, tmp_path, ["cfg.yaml", "--set", "train.steps=10"], **SLURM_ENV)
    assert r.returncode == 0, r.stderr
    srun = _recorded(tmp_path, "srun")
    assert (_flag(srun, "--nodes"), _flag(srun, "--ntasks-per-node")) == ("2", "1")
    tr = _recorded(tmp_path, "torchrun")
    assert (_flag(tr, "--nnodes"), _flag(tr, "--nproc-per-node"), _flag(tr, "--max-restarts")) == ("2", "8", "3")
    assert (_flag(tr, "--rdzv-backend"), _flag(tr, "--rdzv-endpoint"), _flag(tr, "--rdzv-id")) == (
        "c10d",
        "node17:29500",
        "4242",
    )
    assert "--node-rank" not in tr  # c10d assigns node ranks
    assert tr[tr.index("-m") :] == ["-m", "grow_megatron.cli", "train", "cfg.yaml", "--set", "train.steps=10"]
    # Each restart round gets a fresh rendezvous store (a shared one hangs the restarted workers).
    assert _recorded(tmp_path, "torchrun.env") == ["1"]


def test_slurm_script_takes_overrides_from_the_environment(tmp_path):
    r = _run(
        SLURM, tmp_path, ["cfg.yaml"], **SLURM_ENV, NPROC="2", MAX_RESTARTS="0", MASTER_PORT="31000", RDZV_ID="mine"
    )
    assert r.returncode == 0, r.stderr
    tr = _recorded(tmp_path, "torchrun")
    assert (
        _flag(tr, "--nproc-per-node"),
        _flag(tr, "--max-restarts"),
        _flag(tr, "--rdzv-endpoint"),
        _flag(tr, "--rdzv-id"),
    ) == ("2", "0", "node17:31000", "mine")


@pytest.mark.parametrize(
    "args,env,message",
    [
        ([], SLURM_ENV, "usage: sbatch launch_slurm.sbatch CONFIG.yaml"),
        (["cfg.yaml"], {}, "not inside a Slurm job"),
        (["cfg.yaml"], {k: v for k, v in SLURM_ENV.items() if k != "SLURM_GPUS_ON_NODE"}, "SLURM_GPUS_ON_NODE"),
    ],
)
def test_slurm_script_refuses_in_one_line_before_launching(tmp_path, args, env, message):
    r = _run(SLURM, tmp_path, args, **env)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "srun").exists() and not (tmp_path / "torchrun").exists()


def test_torchrun_script_passes_max_restarts(tmp_path):
    r = _run(TORCHRUN, tmp_path, ["cfg.yaml", "--set", "a=b"], NPROC="2", MAX_RESTARTS="2")
    assert r.returncode == 0, r.stderr
    tr = _recorded(tmp_path, "torchrun")
    assert (_flag(tr, "--nproc-per-node"), _flag(tr, "--max-restarts"), _flag(tr, "--nnodes")) == ("2", "2", "1")
    assert tr[tr.index("-m") :] == ["-m", "grow_megatron.cli", "train", "cfg.yaml", "--set", "a=b"]
    assert _recorded(tmp_path, "torchrun.env") == ["1"]


# A 2-rank static run of 6 steps with a checkpoint every 2: the fault kills rank 0 after step 3,
# so the restarted job resumes at step 2 and redoes steps 2 and 3.
ELASTIC = {
    "train.steps": 6,
    "growth.operator": "none",
    "growth.grow_steps": "null",
    "model.num_layers": 4,
    "checkpoint.interval": 2,
}


def _launch(run_dir, tmp_path, fault=None, max_restarts=0):
    """examples/launch_torchrun.sh with 2 CPU ranks, torchrun being this Python's torch.distributed.run."""
    bin_dir = tmp_path / "realbin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "torchrun").write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
    (bin_dir / "torchrun").chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (ENV, "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK")
    }
    sets = [x for o in micro_overrides(run_dir, **ELASTIC) for x in ("--set", o)]
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        NPROC="2",
        MAX_RESTARTS=str(max_restarts),
        MASTER_PORT=str(_free_port()),
        RDZV_ID=f"elastic{os.getpid()}",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    if fault:
        env[ENV] = fault
    p = subprocess.run(
        ["bash", TORCHRUN, os.path.join(ROOT, "examples", "tiny_static.yaml"), *sets],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}, p.stdout + p.stderr


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_elastic_restart_resumes_from_the_last_checkpoint_by_itself(tmp_path):
    reference, _ = _launch(tmp_path / "ref", tmp_path)
    losses, log = _launch(tmp_path / "elastic", tmp_path, fault="step.end@3:kill", max_restarts=1)
    # The kill happened (torchrun reports the signal and restarts the workers), and the
    # restarted trainer resumed from step_2's checkpoint without anyone running a command.
    assert f"exitcode: -{int(signal.SIGKILL)}" in log, log[-3000:]
    assert "starting at step 0" in log and "step_00000002 at step 2" in log, log[-3000:]
    assert sorted(losses) == list(range(6))
    assert losses == reference  # bit for bit: same layout, same data order, resumed state exact
