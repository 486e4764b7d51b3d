"""Process-group setup: torchrun or a plain single process, GPU (nccl) or CPU (gloo)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from grow_megatron.compat import cpu_compat, needs_cpu_compat
from grow_megatron.engine.device import Device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Layout:
    world: int
    rank: int
    tp: int
    pp: int
    dp: int
    device: Device = field(default_factory=Device.local)
    """The device of this process (its GPU, or the CPU), decided by init_distributed."""

    @property
    def is_logging_rank(self) -> bool:
        return self.rank == 0


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def signal_on_parent_death(sig: signal.Signals) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux prctl
    PR_SET_PDEATHSIG); False elsewhere. The caller checks os.getppid() afterwards: a parent
    that died before the request was in place sends nothing."""
    if not sys.platform.startswith("linux"):
        return False
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    return True


def stop_with_launcher() -> None:
    """Under torchrun (Linux): have the kernel send this worker SIGTERM when its agent dies,
    so that a killed launcher cannot leave workers training on (and writing to the run dir);
    SIGTERM then takes the training loop's clean stop. Elsewhere a no-op."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not signal_on_parent_death(signal.SIGTERM):
        return
    if os.getppid() == 1:  # the agent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


# How gloo reports that the other end of a collective went away (the peer process died).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def _exited_local_ranks() -> list[int]:
    """Global ranks of this node's torchrun workers whose process is gone or a zombie: the
    workers are the children of this worker's agent, each with RANK in its environment
    (Linux /proc; empty elsewhere or when nothing can be read)."""
    try:
        me, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        expected = {me - local + i for i in range(int(os.environ["LOCAL_WORLD_SIZE"]))} - {me}
        agent = os.getppid()
        alive = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
                if int(fields[1]) != agent or fields[0] == "Z":
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                if b"RANK" in env:
                    alive.add(int(env[b"RANK"]))
            except (OSError, ValueError, IndexError):
                continue
        return sorted(expected - alive)
    except (KeyError, ValueError, OSError):
        return []


def peer_exit_message(err: BaseException) -> str | None:
    """The one line for a collective that failed because another rank's process exited (gloo's
    "Connection closed by peer"), naming that rank where this node can see it; None for any
    other error."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not any(s in text for s in _PEER_GONE):
        return None
    gone = _exited_local_ranks()
    who = f"rank {', '.join(map(str, gone))}" if gone else "another rank (on another node, or it could not be named)"
    return (
        f"{who} exited; this rank ({os.environ.get('RANK', '?')}) stops; resume with the same command "
        f"(the last complete checkpoint is what it resumes from; the exited rank's own output says why it stopped)"
    )


def init_distributed(tp: int, pp: int, seed: int, vpp: int = 1) -> Layout:
    """Initialise torch.distributed and megatron's parallel_state (idempotent per process)."""
    stop_with_launcher()
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # not launched by torchrun: a world of one
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        device = Device.local()
        if device.is_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(device.backend)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
        )
    world = dist.get_world_size()
    # On CPU the CUDA RNG tracker cannot be read; with dropout 0 the tracker is never used
    # for sampling, so the inference tracker (whose fork() is a no-op) is exact.
    model_parallel_cuda_manual_seed(seed, inference_rng_tracker=needs_cpu_compat(), force_reset_rng=True)
    # The device the process group was started for (by this call or an earlier one).
    device = Device("cuda" if dist.get_backend() == "nccl" else "cpu")
    return Layout(world, dist.get_rank(), tp, pp, world // (tp * pp), device)


def shutdown_distributed() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


# Object collectives over the whole world, for the checkpoint code; in one process each is the
# identity (no process group is needed to save or load single-process).


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_rank0(obj):
    """Rank 0's `obj` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn) -> None:
    """Run `fn` on rank 0; an OSError there is raised on every rank (instead of leaving the
    others waiting at the next collective for a rank that has given up)."""
    failure = None
    if rank() == 0:
        try:
            fn()
        except OSError as err:
            failure = (err.errno, err.strerror, err.filename)
    failure = broadcast_from_rank0(failure)
    if failure is not None:
        raise OSError(*failure) if failure[2] else OSError(*failure[:2])


def gather_on_rank0(obj) -> list:
    """`obj` of every rank, in rank order, on rank 0 (elsewhere: an empty list)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def scatter_from_rank0(objs: list | None):
    """Element `r` of rank 0's `objs` on rank r."""
    if world_size() == 1:
        return objs[0]
    box = [None]
    dist.scatter_object_list(box, objs if rank() == 0 else None, src=0)
    return box[0]


def device_context():
    """The context the whole engine runs in: the CPU compatibility layer when there is no GPU."""
    return cpu_compat() if needs_cpu_compat() else contextlib.nullcontext()
