"""Checkpoints: megatron dist_checkpointing, layout-free, atomic, verified.

Layout of RUN_DIR/checkpoints:
    step_00000120/          one complete checkpoint: dist_checkpointing files, meta.json and
                            manifest.json (size + digest of every other file, see integrity.py)
    step_00000120.tmp-*/    a save in progress or interrupted: never read, removed by the next save
    step_00000120.old-*/    the previous copy of a re-saved step, during the swap (rename fallback)
    latest                  name of the newest complete checkpoint (replaced atomically)

A checkpoint is complete only once every rank wrote its shards, meta.json and manifest.json
were written and synced, and the directory was renamed from its .tmp name; `latest` moves only
after that. Re-saving a step that exists (every resume from a growth checkpoint, every re-run
of a finished run) swaps the new directory with the old one in one atomic renameat2
(RENAME_EXCHANGE) where the OS offers it, so a complete step_N exists at every instant; where
it does not, the old copy is renamed aside first and `latest_checkpoint` (and the next save)
fall back to it if the process dies in between. Every step of this sequence is a named fault
point (engine/faults.py), and tests kill the process at each.

Tensors are written by torch.distributed.checkpoint's FileSystemWriter (dcp_writer.py): in
the saving processes themselves, or for an async save in one forked process per rank that
dies with the trainer; megatron's default writer starts a multiprocessing Manager and forked
writers, which die with a SIGTERM to the process group (Slurm, torchrun) and outlive a
SIGKILLed trainer, and clones every tensor view on the training thread first.

The optimizer state is stored in model space: for every parameter's ShardedTensor in megatron's
model sharded state dict, three more with the same sharding (fp32 main copy, exp_avg,
exp_avg_sq). dist_checkpointing then reshards weights and optimizer state alike, so a
checkpoint written at one TP x PP x DP layout resumes at another.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from grow_megatron import __version__
from grow_megatron.config.base import CheckpointError, ConfigError, RunEnvironmentError
from grow_megatron.config.rundir import CHECKPOINTS, CONFIG
from grow_megatron.engine.build import Engine
from grow_megatron.engine.dcp_writer import DirectSaveStrategy
from grow_megatron.engine.distributed import barrier, broadcast_from_rank0, gather_on_rank0, on_rank0, rank
from grow_megatron.engine.dp_shards import param_pieces
from grow_megatron.engine.faults import fault_point
from grow_megatron.engine.integrity import (
    MANIFEST,
    META,
    digest_files,
    fsync_dir,
    pruned_under_reader,
    rank_shard_files,
    verifying,
    write_manifest,
)
from grow_megatron.engine.keys import MODEL, STATE_KEYS, state_key
from grow_megatron.engine.optim_state import (
    ensure_state_initialized,
    local_range,
    local_state,
    optimizer_step_count,
    set_step_count,
)
from grow_megatron.engine.staging import exchange_dirs as _exchange

if TYPE_CHECKING:
    from grow_megatron.engine.async_save import AsyncSaver

LATEST = "latest"
_STEP_DIR = re.compile(r"step_\d+")
# meta.json keys readers rely on: (type, required, what it is); bool is not an int here.
META_SCHEMA: dict[str, tuple[type, bool, str]] = {
    "step": (int, True, "a non-negative integer: the number of completed steps"),
    "depth": (int, True, "a positive integer: the number of transformer layers"),
    "split": (list, True, "a list of layers per pipeline stage"),
    "growths": (list, False, "a list of growth events"),
    "growth_checkpoint": (bool, False, "true or false"),
}


WRITTEN_BY = f"grow_megatron {__version__}"
"""meta.json's `written_by`: this version always writes a manifest (integrity.py refuses a
checkpoint it wrote that has none)."""


def _rank0() -> bool:
    return rank() == 0


def _flatten(sd: dict, out: dict | None = None, prefix: str = "") -> dict:
    out = {} if out is None else out
    for k, v in sd.items():
        if isinstance(v, dict):
            _flatten(v, out, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _model_params(sd: dict, params: dict, prefix: str = ""):
    """(local name, containing dict, its key, ShardedTensor or factory, parameter) for every
    parameter entry of a chunk's nested sharded state dict; `params`: {id: parameter}.
    Factories: megatron splits the gated fc1 into gate and up halves for TP resharding."""
    for k, v in list(sd.items()):
        if isinstance(v, dict):
            yield from _model_params(v, params, f"{prefix}{k}.")
        elif isinstance(v, (ShardedTensor, ShardedTensorFactory)) and id(v.data) in params:
            yield f"{prefix}{k}", sd, k, v, params[id(v.data)]


def _sharded_state(engine: Engine, for_load: bool) -> tuple[dict, dict]:
    """(sharded state dict, {opt entry: (this rank's 1-d state tensor, piece list)}) for this rank's chunks.

    Every DP rank contributes, for every parameter, only its own flat range of the fp32 main
    copy and moments (engine/dp_shards.py: at most three rectangles of the global tensor,
    views of the optimizer's own tensors), so a save allocates and communicates nothing for the
    optimizer state, and a load reads only the local range, straight into the optimizer. The
    weights are written the same way (each DP rank its range, from the parameter itself) and
    read whole (every DP rank needs all of its slice).

    megatron's sharded keys are global (a layer's key carries its global position), so the
    chunks of an interleaved pipeline only need distinct places in the local dict."""
    model_sd: dict[str, Any] = {}
    optim_sd: dict[str, Any] = {}
    targets: dict[str, tuple[torch.Tensor, list]] = {}
    for c, chunk in enumerate(engine.chunks):
        chunk_sd = chunk.sharded_state_dict(prefix=MODEL)
        model_sd[f"chunk{c}"] = chunk_sd
        for name, parent, key, sh, p in _model_params(chunk_sd, {id(p): p for p in chunk.parameters()}):
            rng = local_range(engine.optimizer, p)
            if not for_load:  # (an empty list would be saved as a common value, clashing on load)
                if rng is None:
                    del parent[key]
                else:
                    parent[key] = param_pieces(sh, p, p.detach().view(-1)[rng[0] : rng[1]], rng[0])
            if rng is None:
                continue
            state = local_state(engine.optimizer, p)
            for k in STATE_KEYS:
                # Before the first step AdamW has no moments yet: they are zero by definition.
                flat = state.get(k)
                if flat is None:
                    flat = torch.zeros(rng[1] - rng[0], dtype=torch.float32, device=p.device)
                entry = f"{k}.chunk{c}.{name}"
                optim_sd[entry] = param_pieces(sh, p, flat, rng[0], key=state_key(k, sh.key))
                targets[entry] = (flat, optim_sd[entry])
    return {"model": model_sd, "optimizer": optim_sd}, targets


def list_checkpoints(ckpt_root: str) -> list[str]:
    if not os.path.isdir(ckpt_root):
        return []
    return sorted(
        d for d in os.listdir(ckpt_root) if _STEP_DIR.fullmatch(d) and os.path.isfile(os.path.join(ckpt_root, d, META))
    )


def _aside_copy(ckpt_root: str, name: str) -> str | None:
    """The complete old copy of step `name` left by a re-save killed between moving it aside
    and renaming the new one into place (rename fallback only)."""
    if not os.path.isdir(ckpt_root):
        return None
    for d in sorted(os.listdir(ckpt_root)):
        if d.startswith(f"{name}.old-") and os.path.isfile(os.path.join(ckpt_root, d, META)):
            return os.path.join(ckpt_root, d)
    return None


def latest_checkpoint(ckpt_root: str) -> str | None:
    """Path of the newest complete checkpoint, or None."""
    path = os.path.join(ckpt_root, LATEST)
    if os.path.isfile(path):
        with open(path) as f:
            name = f.read().strip()
        if os.path.isfile(os.path.join(ckpt_root, name, META)):
            return os.path.join(ckpt_root, name)
        aside = _aside_copy(ckpt_root, name)
        if aside is not None:
            return aside
    found = list_checkpoints(ckpt_root)
    return os.path.join(ckpt_root, found[-1]) if found else None


def unreadable_leftovers(ckpt_root: str) -> str | None:
    """What shows that `ckpt_root` held checkpoints when none of them is complete and readable
    now (`latest` naming a step that is gone, step directories without meta.json), or None
    for a run that never wrote one. A resume must not start such a run over from step 0."""
    if not os.path.isdir(ckpt_root):
        return None
    signs = []
    latest = os.path.join(ckpt_root, LATEST)
    if os.path.isfile(latest):
        with open(latest) as f:
            signs.append(f"{LATEST} names {f.read().strip() or 'nothing'}")
    steps = sorted(d for d in os.listdir(ckpt_root) if _STEP_DIR.fullmatch(d.split(".")[0]) and ".tmp-" not in d)
    if steps:
        signs.append(f"{', '.join(steps)} without a readable {META}")
    return "; ".join(signs) or None


def _install(tmp: str, final: str, step: int, exchange: Callable[[str, str], bool]) -> str | None:
    """Put the complete `tmp` at `final`; returns the old copy to delete (or None). A complete
    `final` (or, in the fallback, its .old- copy that readers fall back to) exists throughout."""
    if not os.path.exists(final):
        os.replace(tmp, final)
        return None
    if exchange(tmp, final):
        return tmp  # now holds the old copy
    aside = f"{final}.old-{uuid.uuid4().hex[:8]}"
    os.replace(final, aside)
    fault_point("save.aside", step)
    os.replace(tmp, final)
    return aside


def _remove_stale(ckpt_root: str) -> None:
    """Before a save: drop what interrupted saves left (their disk space may be what the next
    save needs), restoring an old copy whose replacement never arrived."""
    for d in os.listdir(ckpt_root):
        path = os.path.join(ckpt_root, d)
        if ".old-" in d:
            final = os.path.join(ckpt_root, d.split(".old-")[0])
            if not os.path.exists(final) and os.path.isfile(os.path.join(path, META)):
                os.replace(path, final)
                continue
        if ".tmp-" in d or ".old-" in d:
            shutil.rmtree(path, ignore_errors=True)
    latest_tmp = os.path.join(ckpt_root, f".{LATEST}.tmp")
    if os.path.exists(latest_tmp):
        os.remove(latest_tmp)


def _is_growth_checkpoint(ckpt_dir: str) -> bool:
    try:
        with open(os.path.join(ckpt_dir, META)) as f:
            return bool(json.load(f).get("growth_checkpoint", False))
    except (OSError, ValueError, AttributeError):
        return False


def _disk_full(err: BaseException) -> OSError | None:
    """The ENOSPC OSError inside `err` (DCP wraps each rank's failure), or None."""
    seen = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        todo.extend([e.__cause__, e.__context__])
        for failure in (getattr(e, "failures", None) or {}).values():  # {rank: (exception, traceback)}
            todo.extend(failure if isinstance(failure, tuple) else [failure])
    return None


def save_checkpoint(
    engine: Engine,
    ckpt_root: str,
    step: int,
    meta: dict,
    *,
    growth: bool = False,
    keep_last: int | None = None,
    exchange: Callable[[str, str], bool] | None = None,
    saver: AsyncSaver | None = None,
) -> str:
    """Save the engine after `step` completed steps; returns the checkpoint directory.

    `growth` marks a checkpoint written right before a growth: pruning keeps those (the flag
    lives in meta.json, so every later run sees it). `keep_last` periodic checkpoints are kept.
    A full disk is reported in one line; the last good checkpoint stays `latest`. `exchange`
    swaps two directories atomically (default: renameat2 where the OS has it). `saver`: write
    asynchronously (engine/async_save.py): the shards are written by a background process and
    the rest of the sequence (seal, publish) runs once every rank's writer finished; the
    directory appears only then."""
    if saver is not None:  # one save in flight: the previous one is published first
        saver.wait()
    name = f"step_{step:08d}"
    final = os.path.join(ckpt_root, name)
    tmp = broadcast_from_rank0(f"{final}.tmp-{uuid.uuid4().hex[:8]}" if _rank0() else None)
    # Taken now, not when an async save is sealed: the caller's meta (e.g. its growth list) and
    # the engine may change while the shards are written. A re-save keeps the growth mark of
    # the copy it replaces.
    full_meta = json.loads(
        json.dumps(
            {
                **meta,
                "step": step,
                "depth": engine.depth,
                "split": list(engine.split),
                "written_by": WRITTEN_BY,
                "growth_checkpoint": growth or (_rank0() and _is_growth_checkpoint(final)),
            }
        )
    )

    def begin():
        os.makedirs(ckpt_root, exist_ok=True)
        _remove_stale(ckpt_root)
        fault_point("save.begin", step)
        os.makedirs(tmp)

    def seal(mine: dict | None = None):
        # Every rank digests the shard files it wrote, at the same time (an async writer did it
        # already: `mine`); rank 0 adds the rest.
        if mine is None:
            mine = digest_files(tmp, rank_shard_files(tmp, rank()))
        digested = gather_on_rank0(mine)

        def write():
            fault_point("save.written", step)
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(full_meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            write_manifest(tmp, {rel: e for part in digested for rel, e in part.items()})
            fsync_dir(tmp)
            fault_point("save.sealed", step)

        on_rank0(write)

    def publish():
        old = _install(tmp, final, step, exchange or _exchange)
        fault_point("save.swapped", step)
        fsync_dir(ckpt_root)
        if old is not None:
            shutil.rmtree(old)
        latest_tmp = os.path.join(ckpt_root, f".{LATEST}.tmp")
        with open(latest_tmp, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        fault_point("save.latest", step)
        os.replace(latest_tmp, os.path.join(ckpt_root, LATEST))
        fsync_dir(ckpt_root)
        fault_point("save.done", step)
        _prune(ckpt_root, name, keep_last, background=saver is not None)

    strategy = DirectSaveStrategy()

    def finish():
        barrier()
        seal(strategy.digests)
        on_rank0(publish)
        barrier()

    def failed(err: BaseException) -> None:
        """A full disk, in one line, with the partial save removed; anything else as it is."""
        full = _disk_full(err)
        if full is None:
            return
        if _rank0():
            shutil.rmtree(tmp, ignore_errors=True)
        good = latest_checkpoint(ckpt_root)
        raise RunEnvironmentError(
            "checkpoint",
            tmp,
            f"ENOSPC (no space left on device) while saving step {step} "
            f"({full.filename or 'a checkpoint file'}): free disk space or set "
            f"run_dir on a larger disk; the partial save was removed and "
            f"{good or 'no checkpoint'} stays the last good one",
        ) from err

    try:
        on_rank0(begin)
        barrier()
        sd, _ = _sharded_state(engine, for_load=False)
        sd["common"] = {"optimizer_step": optimizer_step_count(engine.optimizer)}
        if saver is not None:
            # megatron's async writer (a forked process per save, see async_save.py); `finish`
            # runs on every rank once all writers are done, a failed writer raises everywhere
            # (through `failed`, at the step that finds it done).
            saver.submit(
                dist_checkpointing.save(sd, tmp, sharded_strategy=strategy, async_sharded_save=True),
                finish,
                on_error=failed,
            )
            return final
        dist_checkpointing.save(sd, tmp, sharded_strategy=strategy)
        barrier()
        seal()
    except (OSError, CheckpointException) as err:
        failed(err)
        raise
    on_rank0(publish)
    barrier()
    return final


def _prune(ckpt_root: str, saved: str, keep_last: int | None, background: bool = False) -> None:
    """Keep the newest `keep_last` periodic checkpoints, every growth checkpoint (by the mark in
    its meta.json) and the one just saved. `background`: rename the others to `.tmp-` names at
    once (never read; the next save removes what is left) and delete them in a thread: an async
    save's publish runs on the training thread, and unlinking a large checkpoint takes longer
    than everything else it does."""
    if keep_last is None:
        return
    removable = [
        d for d in list_checkpoints(ckpt_root) if d != saved and not _is_growth_checkpoint(os.path.join(ckpt_root, d))
    ]
    doomed = [os.path.join(ckpt_root, d) for d in removable[: max(0, len(removable) - (keep_last - 1))]]
    if background:
        trash = [f"{path}.tmp-pruned-{uuid.uuid4().hex[:8]}" for path in doomed]
        for path, aside in zip(doomed, trash):
            os.replace(path, aside)
        threading.Thread(
            target=lambda: [shutil.rmtree(a, ignore_errors=True) for a in trash], name="prune-checkpoints", daemon=True
        ).start()
        return
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def _vanished(err: BaseException) -> bool:
    """Whether `err` (or a failure DCP wrapped in it) is a file that is not there."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, FileNotFoundError):
            return True
        todo.extend([e.__cause__, e.__context__])
        for failure in (getattr(e, "failures", None) or {}).values():
            todo.extend(failure if isinstance(failure, tuple) else [failure])
    return False


HELD = ".held-"
"""Prefix of a reader's hold on a checkpoint (hold_checkpoint): `.held-<host>-<pid>-<id>-<step>`."""


class CheckpointGone(Exception):
    """The checkpoint to hold was removed (pruned) before all of its files were held."""


def _hold_owner_alive(name: str) -> bool:
    """Whether the reader that made hold `name` may still run (another host: assume so)."""
    parts = name[len(HELD) :].split("-")  # host, pid, id, step name
    if len(parts) != 4 or parts[0] != socket.gethostname().replace("-", "_"):
        return True
    try:
        os.kill(int(parts[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _drop_dead_holds(ckpt_root: str) -> None:
    """Remove the holds of readers that died (SIGKILL) without releasing them."""
    for d in os.listdir(ckpt_root):
        if d.startswith(HELD) and not _hold_owner_alive(d):
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


def hold_checkpoint(ckpt_dir: str) -> str | None:
    """A reader's own copy of a checkpoint's directory entries: hard links to its files in
    `<checkpoints>/.held-*`, so a trainer pruning (removing) the checkpoint meanwhile cannot
    pull the files away from the reader; it costs no copy and no space until the original is
    removed. Returns the held directory (release it with release_checkpoint), or None where
    links cannot be made there (read-only or foreign file system: read in place). Raises
    CheckpointGone when the checkpoint was removed before everything was held.

    Files are linked through a descriptor of the checkpoint directory: a re-save that
    exchanges the directory with a new copy meanwhile cannot mix the two copies."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    root, name = os.path.split(ckpt_dir)
    host = socket.gethostname().replace("-", "_")
    held = os.path.join(root, f"{HELD}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")
    try:
        _drop_dead_holds(root)
        fd = os.open(ckpt_dir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise CheckpointGone(ckpt_dir) from None
    except OSError:
        return None
    try:
        os.mkdir(held)
        for entry in os.listdir(fd):
            os.link(entry, os.path.join(held, entry), src_dir_fd=fd, follow_symlinks=False)
        if not os.path.isfile(os.path.join(held, META)):
            raise FileNotFoundError(os.path.join(ckpt_dir, META))
    except FileNotFoundError:
        shutil.rmtree(held, ignore_errors=True)
        raise CheckpointGone(ckpt_dir) from None
    except OSError:  # no hard links here (EPERM, EXDEV, EROFS, a subdirectory, ...): read in place
        shutil.rmtree(held, ignore_errors=True)
        return None
    finally:
        os.close(fd)
    return held


def release_checkpoint(held: str | None) -> None:
    """Drop a hold (hold_checkpoint); the original files stay as they are."""
    if held:
        shutil.rmtree(held, ignore_errors=True)


def unreadable_checkpoint(ckpt_dir: str, err: BaseException) -> CheckpointError:
    """A checkpoint whose files cannot be read, diagnosed: removed under the reader (pruned by
    a live trainer), a meta.json or files that do not parse (damage: truncated copy, hand edit),
    or files that verify but do not fit the reader. One line naming it and the way out, not
    torch's multi-line traceback. (A model of another shape is named before any read:
    `check_shapes`; damage in a checkpoint with a manifest is named by verification.)"""
    if not os.path.isdir(ckpt_dir) or _vanished(err):
        return pruned_under_reader(ckpt_dir)
    failures = getattr(err, "failures", None)  # DCP's CheckpointException wraps each rank's error
    if failures:
        err = next(iter(failures.values()))
        if isinstance(err, tuple):  # (exception, traceback summary)
            err = err[0]
    first = (str(err).strip().splitlines() or [""])[0][:200]
    why = f"{type(err).__name__}: {first}" if first else type(err).__name__
    if os.path.isfile(os.path.join(ckpt_dir, MANIFEST)) and os.path.isfile(os.path.join(ckpt_dir, META)):
        return CheckpointError(
            "checkpoint",
            ckpt_dir,
            f"cannot be read by this reader ({why}) although its files are "
            f"the ones written (its {MANIFEST} verifies): it does not fit what "
            f"is read (another model config or grow_megatron version?); read "
            f"it with the config it was trained with (its run's {CONFIG})",
        )
    return CheckpointError(
        "checkpoint",
        ckpt_dir,
        f"cannot be read, its files are truncated or corrupted "
        f"({why}): use an earlier {CHECKPOINTS}/step_* (training resumes "
        "from the newest complete one once this one is moved away)",
    )


def check_shapes(sd: dict, ckpt_dir: str) -> None:
    """Before a load: every tensor the engine asks for is in the checkpoint with the same
    global shape. A model of another shape (a changed model.hidden_size, num_layers, ...) is
    a config mismatch, named as one; DCP would report it as an unreadable file."""
    stored = tensor_specs(ckpt_dir)
    mismatch = None
    for key, shape in sorted(_requested_shapes(sd).items()):
        have = stored.get(key)
        if have is None or tuple(have[0]) != shape:
            held = f"holds {key} with shape {list(have[0])}" if have is not None else f"holds no {key}"
            mismatch = (held, list(shape))
            break
    # Each pipeline rank asks for its own layers: all ranks agree before the collective load.
    found = [m for m in gather_on_rank0(mismatch) if m is not None]
    mismatch = broadcast_from_rank0(found[0] if found else None)
    if mismatch is not None:
        raise ConfigError(
            "checkpoint",
            ckpt_dir,
            f"{mismatch[0]}, but this config's model needs shape {mismatch[1]}: "
            f"the checkpoint was trained with another model config (model.* "
            f"shape fields); nothing is damaged: use the config it was trained "
            f"with (its run's {CONFIG}), or another run_dir for this model",
        )


def _requested_shapes(obj, out: dict | None = None) -> dict[str, tuple[int, ...]]:
    """{key: global shape} of every ShardedTensor in a (nested) sharded state dict."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for v in obj.values():
            _requested_shapes(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _requested_shapes(v, out)
    elif isinstance(obj, ShardedTensor):
        out[obj.key] = tuple(obj.global_shape)
    return out


def tensor_specs(ckpt_dir: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of every global tensor of a checkpoint (weights and optimizer state),
    from its metadata: whatever TP x PP x DP layout wrote it, a tensor has one global shape."""
    try:
        md = FileSystemReader(ckpt_dir).read_metadata()
    except Exception as err:  # noqa: BLE001 - any failure to parse a user's file is reported, not raised
        raise unreadable_checkpoint(ckpt_dir, err) from err
    return {
        k: (tuple(v.size), v.properties.dtype)
        for k, v in md.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata)
    }


def read_global_tensors(ckpt_dir: str, specs: dict | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
    """Whole global tensors by key (`specs` as tensor_specs gives them; default all), read in
    one process without a process group: DCP reassembles the shards of any layout. `verify`
    checks the files against the manifest first (readers that read key by key verify once)."""
    wanted = None if specs is None else set(specs).__contains__
    with verifying(ckpt_dir, enabled=verify, keys=wanted):
        specs = tensor_specs(ckpt_dir) if specs is None else specs
        out = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in specs.items()}
        try:
            dcp.load(out, storage_reader=FileSystemReader(ckpt_dir), no_dist=True)
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - a truncated .distcp fails anywhere in torch
            raise unreadable_checkpoint(ckpt_dir, err) from err
    return out


def read_meta(ckpt_dir: str) -> dict:
    """meta.json, checked: a missing key or a value of the wrong type is named in one line."""
    path = os.path.join(ckpt_dir, META)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:  # a truncated or hand-edited meta.json
        raise unreadable_checkpoint(ckpt_dir, err) from err
    if not isinstance(meta, dict):
        raise CheckpointError(
            path, type(meta).__name__, f"must hold a JSON object: restore it or use an earlier {CHECKPOINTS}/step_*"
        )
    for key, (tp, required, what) in META_SCHEMA.items():
        if key not in meta and not required:
            continue
        if key not in meta:
            raise CheckpointError(
                f"{path}: {key}",
                "<missing>",
                f"must be {what}: restore the file or use an earlier {CHECKPOINTS}/step_*",
            )
        value = meta[key]
        if not isinstance(value, tp) or (tp is int and (isinstance(value, bool) or value < (key == "depth"))):
            raise CheckpointError(
                f"{path}: {key}", value, f"must be {what}: restore the file or use an earlier {CHECKPOINTS}/step_*"
            )
    return meta


def _load_verified(sd: dict, ckpt_dir: str) -> dict:
    """dist_checkpointing.load, with rank 0 verifying the files meanwhile (one pass over them,
    not one per rank) and every rank raising its verdict before anything loaded is used."""
    failure = None
    try:
        with verifying(ckpt_dir, enabled=_rank0()):
            try:
                loaded = dist_checkpointing.load(sd, ckpt_dir)
            except (Exception, CheckpointException) as err:  # noqa: BLE001 - a truncated .distcp fails anywhere in torch
                raise unreadable_checkpoint(ckpt_dir, err) from err
    except CheckpointError as err:
        failure = (err.path, err.value, err.allowed)
    # Rank 0's verdict reaches every rank; a reader error (DCP raises it on every rank) stays.
    verdict = broadcast_from_rank0(failure)
    if failure is not None or verdict is not None:
        raise CheckpointError(*(failure or verdict))
    return loaded


def load_checkpoint(engine: Engine, ckpt_dir: str) -> dict:
    """Load weights and optimizer state into an engine of the checkpoint's depth."""
    meta = read_meta(ckpt_dir)
    if meta["depth"] != engine.depth:
        raise ValueError(f"checkpoint {ckpt_dir} holds depth {meta['depth']}, engine has {engine.depth}")
    ensure_state_initialized(engine.optimizer)
    sd, targets = _sharded_state(engine, for_load=True)
    check_shapes(sd, ckpt_dir)
    sd["common"] = {"optimizer_step": 0}
    with torch.no_grad():
        loaded = _load_verified(sd, ckpt_dir)
        for c, chunk in enumerate(engine.chunks):
            chunk.load_state_dict(_unflatten_model(loaded["model"][f"chunk{c}"]), strict=False)
        for entry, (_flat, requested) in targets.items():
            # DCP reads into the requested pieces, which are views of the optimizer's tensors;
            # copy what came back in case a backend returned new tensors.
            for want, got in zip(requested, loaded["optimizer"][entry]):
                if got.data_ptr() != want.data.data_ptr():
                    want.data.copy_(got.view_as(want.data))
    set_step_count(engine.optimizer, int(loaded["common"]["optimizer_step"]))
    return meta


def _unflatten_model(model_sd: dict) -> dict:
    """Loaded MODEL-prefixed entries back to the module's state-dict names."""
    return {k[len(MODEL) :]: v for k, v in _flatten(model_sd).items() if torch.is_tensor(v)}
