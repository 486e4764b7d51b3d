"""Named fault-injection points, armed by one environment variable (tests and tools/soak.py).
Every fault the package can inject goes through it.

    GROW_MEGATRON_FAULT=POINT[@STEP][:ACTION]

fires ACTION whenever the process reaches POINT (with that step, if given), on global rank 0
only, and not in a worker torchrun restarted (`--max-restarts`, TORCHELASTIC_RESTART_COUNT > 0):
an injected fault stands for one crash, which the restarted job must get past. Points are named
where they sit: `save.*` inside save_checkpoint (see FAULT_POINTS), `step.end` after each
training step, `grow.*` and `export.*` in the staged outputs of `grow-megatron grow` and
`convert to-hf` (engine/staging.py). Process actions (fault_point):

    exit        os._exit(FAULT_EXIT_CODE): dies on the spot, no cleanup, no flushing (default)
    kill        SIGKILL to this process
    raise       raise InjectedFault (a BaseException, so no `except Exception` cleans up):
                in-process tests get the disk state a kill would leave
    enospc      raise OSError(ENOSPC), as a full disk does
    term        SIGTERM to this process only
    term-group  SIGTERM to this process's whole process group (what Slurm and torchrun send)
    kill-parent SIGKILL to the parent process (the torchrun agent, for workers)
    kill-parent-wait  the same, then wait for a signal for ever: the process is gone afterwards
                only if something (the kernel's parent-death signal) kills it

Two points have a fault their caller performs (fault_armed), on every rank:

    step.grads@STEP:nan           the step's gradients are made NaN before the update
    study.step@PHASE[:VARIANT[:SEED]]:stop
                                  the study stops (StudyInterrupted) after that step's command
                                  ran and before its marker is written

Reading the environment at every point keeps this free of module state; unarmed, a point
costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "GROW_MEGATRON_FAULT"
FAULT_EXIT_CODE = 86

FAULT_POINTS = (
    "save.begin",  # stale .tmp-* removed, nothing of this save written yet
    "save.written",  # every rank's tensor files in step_N.tmp-*, no meta.json/manifest yet
    "save.sealed",  # meta.json and manifest.json written and synced in the .tmp-* dir
    "save.swapped",  # .tmp-* renamed to (or exchanged with) step_N; the old copy not yet removed
    "save.aside",  # (rename fallback only) old step_N moved aside, new one not yet in place
    "save.latest",  # new `latest` written to its temporary name, not yet renamed over `latest`
    "save.done",  # `latest` names step_N; pruning of old checkpoints not yet done
    "step.end",  # a training step (and its metrics line) finished; STEP is its number
    "save.writer",  # inside the forked writer of an async save (checkpoint.async_save), before it writes
    "grow.checkpoint",  # `grow`: the grown checkpoint written in OUT's staging dir, no history or config.yaml yet
    "grow.history",  # `grow`: the source run's metrics/events copied too, config.yaml not yet written
    "grow.staged",  # `grow`: everything in the staging dir, not yet renamed to OUT
    "export.weights",  # `convert to-hf`: model.safetensors in the staging dir, no config.json/tokenizer yet
    "export.staged",  # `convert to-hf`: the whole export in the staging dir, not yet renamed to OUT_DIR
    "step.grads",  # a training step's gradients, before the update (action nan)
    "study.step",  # a study step's command ran, its marker not yet written (action stop); STEP: the
    # study step, PHASE[:VARIANT[:SEED]]
)
ACTIONS = ("exit", "kill", "raise", "enospc", "term", "term-group", "kill-parent", "kill-parent-wait")
CALLER_ACTIONS = {"step.grads": "nan", "study.step": "stop"}
"""The points whose fault their caller performs, and its action (the only one they take)."""


class InjectedFault(BaseException):
    """Raised by the `raise` action; a BaseException so that ordinary error handling skips it."""


def _armed() -> tuple[str, str | None, str] | None:
    """(point, step or None, action) of the armed fault. A study step holds colons, so the
    action is the part after the last one when that names an action."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, action = spec.rpartition(":")
    if action not in ACTIONS and action not in CALLER_ACTIONS.values():
        point, action = spec, ""
    point, _, step = point.partition("@")
    action = action or CALLER_ACTIONS.get(point, "exit")
    allowed = (CALLER_ACTIONS[point],) if point in CALLER_ACTIONS else ACTIONS
    if point not in FAULT_POINTS or action not in allowed:
        raise ValueError(
            f"{ENV}={spec!r}: point must be one of {FAULT_POINTS}, action one of {ACTIONS} "
            f"(step.grads: nan, study.step: stop)"
        )
    return point, step or None, action


def _names(armed, name: str, step) -> bool:
    return armed is not None and armed[0] == name and (armed[1] is None or armed[1] == str(step))


def fault_armed(name: str, step=None) -> bool:
    """Whether the armed fault is this caller-performed point's (CALLER_ACTIONS) at `step`, on
    every rank. study.step takes a study step: its selector is a prefix of PHASE:VARIANT:SEED."""
    armed = _armed()
    if name == "study.step" and armed is not None and armed[0] == name:
        return step.matches(armed[1] or "")
    return _names(armed, name, step)


def fault_point(name: str, step: int | None = None) -> None:
    """Fire the armed fault if it names this point (and step); a no-op otherwise."""
    armed = _armed()
    if not _names(armed, name, step) or name in CALLER_ACTIONS:
        return
    if os.environ.get("RANK", "0") != "0" or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    action = armed[2]
    if action == "exit":
        os._exit(FAULT_EXIT_CODE)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
        raise InjectedFault(f"{name}@{step}")
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    if action == "term-group":
        os.killpg(os.getpgid(0), signal.SIGTERM)
    if action in ("kill-parent", "kill-parent-wait"):
        os.kill(os.getppid(), signal.SIGKILL)
    if action == "kill-parent-wait":
        while True:  # outlive the parent unless something kills this process (the test's question)
            signal.pause()
