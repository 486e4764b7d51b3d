"""Soak test: kill a tiny grown run at random moments, resume it, and check nothing was lost.

    python tools/soak.py --points 50 --out runs/soak [--seed 0] [--json runs/soak/soak.json] [--dp 2] [--async-save]

One uninterrupted reference run, then for each point: start `grow-megatron train` in its own
process group, send SIGKILL or SIGTERM to the whole group (as Slurm / torchrun / `kill -PGID`
do) after a random step plus a random fraction of a step (one point in eight: at a random
moment of setup), then check

- orphans: processes of the killed group still alive once its leader is gone;
- latest: `latest` names a checkpoint that reads (meta.json, manifest digests, every tensor);
- lost: `latest` is older than a checkpoint `latest` named before the kill (polled);

then resume it to the end and compare with the reference: the per-step losses in
metrics.jsonl and every tensor (weights and AdamW state) of the final checkpoint, bit for bit.
Random delays make this a soak tool, not a test; the tests (tests/test_checkpoint_faults.py)
hit each point of the save sequence through explicit fault hooks.

The run is examples/tiny_lidas.yaml shrunk to width 64 and 24 steps, with a checkpoint every
3 steps and growths at steps 3 and 10 (step_3 is saved twice: periodic, then before the growth).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "examples", "tiny_lidas.yaml")
OVERRIDES = {
    "model.hidden_size": 64,
    "model.ffn_hidden_size": 160,
    "model.num_attention_heads": 4,
    "model.num_query_groups": 2,
    "model.seq_length": 32,
    "train.steps": 24,
    "train.global_batch_size": 4,
    "train.micro_batch_size": 2,
    "train.eval_interval": 0,
    "optim.warmup_steps": 2,
    "optim.decay_steps": 4,
    "checkpoint.interval": 3,
    "checkpoint.keep_last": 2,
    "logging.progress": "false",
    "logging.tensorboard": "false",
}


def train_cmd(run_dir: str, dp: int = 1, async_save: bool = False) -> list[str]:
    """The run's command: one process, or `dp` data-parallel ranks under torchrun (its agent and
    workers share the process group that the kill signals)."""
    over = {**OVERRIDES, "checkpoint.async_save": "on" if async_save else "off"}
    sets = [a for k, v in over.items() for a in ("--set", f"{k}={v}")]
    launch = (
        [sys.executable]
        if dp == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(dp)]
    )
    return [*launch, "-m", "grow_megatron.cli", "train", CONFIG, *sets, "--run-dir", run_dir]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    e.pop("GROW_MEGATRON_FAULT", None)
    return e


def group_alive(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def latest_name(root: str) -> str | None:
    try:
        with open(os.path.join(root, "latest")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def losses(run_dir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec:
                out[rec["step"]] = rec["loss"]
    return out


def read_latest(run_dir: str):
    """(step, tensors) of the latest checkpoint, fully verified; raises if it does not read."""
    from grow_megatron.engine.checkpoint import latest_checkpoint, read_global_tensors, read_meta

    ckpt = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if ckpt is None:
        return None, None
    meta = read_meta(ckpt)
    return meta["step"], read_global_tensors(ckpt)


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_to_end(run_dir: str, log, cmd=train_cmd) -> int:
    return subprocess.run(cmd(run_dir), env=env(), stdout=log, stderr=subprocess.STDOUT).returncode


def _lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return -1


def kill_point(run_dir: str, delay: float, after_step: int | None, sig: signal.Signals, log, cmd=train_cmd) -> dict:
    """Start a run and signal its process group: `delay` s after it started or, with
    `after_step`, `delay` s after its metrics.jsonl got the line of that step (setup time and
    step times vary on a shared machine, so kills are aimed by progress, not by the clock);
    wait for it; what it left."""
    root = os.path.join(run_dir, "checkpoints")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    proc = subprocess.Popen(cmd(run_dir), env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[str] = set()
    t0 = None if after_step is not None else time.monotonic()
    while proc.poll() is None and (t0 is None or time.monotonic() - t0 < delay):
        if t0 is None and _lines(metrics) > after_step:
            t0 = time.monotonic()
        name = latest_name(root)
        if name:
            seen.add(name)
        time.sleep(0.01)
    signalled = proc.poll() is None
    if signalled:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            signalled = False
    rc = proc.wait()
    # A clean SIGTERM stop ends with the leader; give exiting children the same moment to go.
    deadline = time.monotonic() + 5
    orphans = group_alive(proc.pid)
    while orphans and time.monotonic() < deadline:
        time.sleep(0.1)
        orphans = group_alive(proc.pid)
    for pid in orphans:  # leave the machine clean for the next point
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"rc": rc, "signalled": signalled, "orphans": len(orphans), "seen_latest": max(seen) if seen else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=50)
    p.add_argument("--out", default="runs/soak")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="result file (default OUT/soak.json)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel ranks (torchrun --nproc-per-node; default 1)")
    p.add_argument("--async-save", action="store_true", help="checkpoint.async_save: on (forked writers)")
    args = p.parse_args(argv)
    cmd = functools.partial(train_cmd, dp=args.dp, async_save=args.async_save)
    rng = random.Random(args.seed)
    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    log = open(os.path.join(out, "soak.log"), "w")

    ref_dir = os.path.join(out, "reference")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd(ref_dir), env=env(), stdout=log, stderr=subprocess.STDOUT)
    first_step = None  # when the first metrics line appeared: kills land between it and the end
    while proc.poll() is None:
        if first_step is None and os.path.exists(os.path.join(ref_dir, "metrics.jsonl")):
            first_step = time.monotonic() - t0
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed, see {out}/soak.log")
    ref_seconds = time.monotonic() - t0
    first_step = first_step or 0.0
    ref_losses = losses(ref_dir)
    ref_step, ref_tensors = read_latest(ref_dir)
    step_seconds = (ref_seconds - first_step) / len(ref_losses)
    print(
        f"reference: {len(ref_losses)} steps to step {ref_step} in {ref_seconds:.1f}s (first step logged "
        f"after {first_step:.1f}s)",
        flush=True,
    )

    rows = []
    for i in range(args.points):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
        # Mostly while it trains, saves and grows (after a random step, plus a random part of a
        # step); one point in eight during setup.
        in_training = rng.random() >= 0.125
        steps = int(OVERRIDES["train.steps"])
        after_step = rng.randrange(steps) if in_training else None
        delay = rng.uniform(0.0, step_seconds) if in_training else rng.uniform(0.0, first_step)
        run_dir = os.path.join(out, f"point{i:03d}")
        k = kill_point(run_dir, delay, after_step, sig, log, cmd)
        row = {
            "point": i,
            "signal": sig.name,
            "phase": "training" if in_training else "setup",
            "after_step": after_step,
            "delay_s": round(delay, 2),
            **k,
        }
        try:
            step, _ = read_latest(run_dir)
            row["latest_step"] = step
            row["poisoned_latest"] = False
        except Exception as err:  # noqa: BLE001 - any failure to read `latest` is the finding
            row["latest_step"], row["poisoned_latest"] = None, True
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        seen = k["seen_latest"]
        row["lost"] = seen is not None and (row["latest_step"] is None or row["latest_step"] < int(seen[5:]))
        rc = run_to_end(run_dir, log, cmd)
        row["resumed"] = rc == 0
        try:
            got_step, got = read_latest(run_dir)
            row["losses_equal"] = losses(run_dir) == ref_losses
            row["tensors_equal"] = got_step == ref_step and same_tensors(got, ref_tensors)
        except Exception as err:  # noqa: BLE001
            row["losses_equal"] = row["tensors_equal"] = False
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        row["bit_equal"] = row["losses_equal"] and row["tensors_equal"]
        rows.append(row)
        print(
            f"{i:3d} {sig.name:7s} {row['phase']:8s} step {after_step} +{delay:5.1f}s rc={k['rc']:4d} "
            f"latest={row['latest_step']} "
            f"orphans={k['orphans']} resumed={row['resumed']} bit_equal={row['bit_equal']}",
            flush=True,
        )
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
        write_result(rows, args, ref_seconds, first_step, argv)  # after every point: a stopped soak still reports

    summary = write_result(rows, args, ref_seconds, first_step, argv)
    print()
    print("| measure | count |\n|---|---|")
    for k in (
        "points",
        "sigkill",
        "sigterm_group",
        "signalled_while_running",
        "in_training_phase",
        "resumed",
        "bit_equal",
        "checkpoints_lost",
        "poisoned_latest",
        "orphan_processes",
    ):
        print(f"| {k} | {summary[k]} |")
    ok = (
        summary["resumed"] == summary["bit_equal"] == len(rows)
        and not summary["checkpoints_lost"]
        and not summary["poisoned_latest"]
        and not summary["orphan_processes"]
    )
    return 0 if ok else 1


def write_result(rows, args, ref_seconds, first_step, argv) -> dict:
    summary = {
        "points": len(rows),
        "sigkill": sum(r["signal"] == "SIGKILL" for r in rows),
        "sigterm_group": sum(r["signal"] == "SIGTERM" for r in rows),
        "signalled_while_running": sum(r["signalled"] for r in rows),
        "in_training_phase": sum(r["phase"] == "training" and r["signalled"] for r in rows),
        "resumed": sum(r["resumed"] for r in rows),
        "bit_equal": sum(r["bit_equal"] for r in rows),
        "checkpoints_lost": sum(r["lost"] for r in rows),
        "poisoned_latest": sum(r["poisoned_latest"] for r in rows),
        "orphan_processes": sum(r["orphans"] for r in rows),
        "dp": args.dp,
        "async_save": args.async_save,
        "reference_seconds": round(ref_seconds, 1),
        "first_step_seconds": round(first_step, 1),
        "seed": args.seed,
        "command": " ".join(["python", "tools/soak.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    with open(args.json or os.path.join(os.path.abspath(args.out), "soak.json"), "w") as f:
        json.dump({"summary": summary, "points": rows}, f, indent=1)
    return summary


if __name__ == "__main__":
    sys.exit(main())
