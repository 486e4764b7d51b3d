"""Digests of a checkpoint directory: written once every rank has written, checked on load.

manifest.json lists every other file of the checkpoint directory (tensor shards, DCP and
megatron metadata, common.pt, meta.json) with its size and xxh3-128 digest; a tensor shard
file (`*.distcp`) is digested per stored item instead (the byte ranges DCP's `.metadata`
records for each tensor piece, which tile the file), so a reader of some tensors verifies
exactly the bytes it reads: convert, eval and analyze read the weights, not the optimizer
state that makes up three quarters of a checkpoint. xxh3 is a
non-cryptographic hash: it detects corruption (a torn copy, flipped bits, a hand edit), not
an attacker, and runs at memory speed (~15 GB/s on one core, releasing the GIL). Where a
checkpoint does not fit in the page cache, a separate pass would read it from disk twice, so
loaders verify *while* they read (`verifying`): both passes stream the same files at the same
time and the disk serves them about once (docs/benchmarks.md). Checkpoints written before
manifests existed load with a warning; a checkpoint whose meta.json shows it was written by a
version that always writes the manifest (`written_by`, or the `growth_checkpoint` mark that came
with manifests) and has none is damaged, and refused: loading it unverified is how a corrupted
shard turns into NaN steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from collections.abc import Callable

import xxhash
from torch.distributed.checkpoint import FileSystemReader

from grow_megatron.config.base import CheckpointError
from grow_megatron.config.rundir import CHECKPOINTS

MANIFEST = "manifest.json"
META = "meta.json"
"""A checkpoint's own record (step, depth, growths, who wrote it); reading.py reads it, writer.py writes it."""
MANIFEST_ERA_KEYS = ("written_by", "growth_checkpoint")
"""meta.json keys that only versions writing a manifest with every checkpoint put there."""
ALGORITHM = "xxh3_128"
_CHUNK = 16 << 20  # large reads: the hash, not the syscalls, should be the cost


def file_digest(path: str, offset: int = 0, length: int | None = None) -> str:
    """Digest of `length` bytes of `path` from `offset` (default: to the end)."""
    h = xxhash.xxh3_128()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    left = length
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while left is None or left > 0:
            n = f.readinto(buf if left is None or left >= _CHUNK else view[:left])
            if not n:
                break
            h.update(view[:n])
            if left is not None:
                left -= n
    return h.hexdigest()


def _stored_items(ckpt_dir: str) -> dict[str, list[tuple[int, int, str]]]:
    """{shard file: [(offset, length, tensor key)]} from DCP's metadata."""
    md = FileSystemReader(ckpt_dir).read_metadata()
    by_file: dict[str, list[tuple[int, int, str]]] = {}
    for index, info in md.storage_data.items():
        by_file.setdefault(info.relative_path, []).append((info.offset, info.length, index.fqn))
    return by_file


def file_entry(path: str, items: list[tuple[int, int, str]] | None = None) -> dict:
    """The manifest entry of one file: its size, plus a digest per stored item when `items`
    (offset, length, tensor key) tile the file exactly, else one digest of the whole file."""
    size = os.path.getsize(path)
    items = sorted(items or [])
    end = 0
    for offset, length, _ in items:
        if offset != end:
            break
        end += length
    if items and end == size:
        return {"size": size, "items": [[o, n, key, file_digest(path, o, n)] for o, n, key in items]}
    return {"size": size, "digest": file_digest(path)}


def _files(ckpt_dir: str) -> list[str]:
    out = []
    for root, _, names in os.walk(ckpt_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), ckpt_dir)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def fsync_dir(path: str) -> None:
    """Make renames and new entries in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rank_shard_files(ckpt_dir: str, rank: int) -> list[str]:
    """The tensor shard files rank `rank` wrote (DCP names them `__<rank>_<n>.distcp`)."""
    prefix = f"__{rank}_"
    return [rel for rel in _files(ckpt_dir) if rel.startswith(prefix) and rel.endswith(".distcp")]


def digest_files(ckpt_dir: str, rels: list[str]) -> dict[str, dict]:
    """Manifest entries of `rels` (file_entry, the items of shard files from DCP's `.metadata`)."""
    items = (
        _stored_items(ckpt_dir)
        if any(r.endswith(".distcp") for r in rels) and os.path.isfile(os.path.join(ckpt_dir, ".metadata"))
        else {}
    )
    return {rel: file_entry(os.path.join(ckpt_dir, rel), items.get(rel)) for rel in rels}


def write_manifest(ckpt_dir: str, digested: dict[str, dict] | None = None) -> None:
    """Write `ckpt_dir`'s manifest.json (synced to disk). `digested`: entries already computed
    (each rank digests the shard files it wrote, in parallel: one process reading a whole
    multi-rank checkpoint would make every save as slow as reading it back); every other file
    is digested here."""
    digested = dict(digested or {})
    files = {**digest_files(ckpt_dir, [r for r in _files(ckpt_dir) if r not in digested]), **digested}
    path = os.path.join(ckpt_dir, MANIFEST)
    with open(path, "w") as f:
        json.dump({"algorithm": ALGORITHM, "files": dict(sorted(files.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def pruned_under_reader(ckpt_dir: str) -> CheckpointError:
    """A checkpoint removed while it was read: a live trainer pruned it (checkpoint.keep_last)."""
    return CheckpointError(
        "checkpoint",
        ckpt_dir,
        "was removed while it was being read (a trainer running in this run "
        "directory pruned it, checkpoint.keep_last): nothing is damaged; read "
        "again (the run directory reads its newest checkpoint, held while it "
        "is read), or read a growth checkpoint, which is never pruned",
    )


def _corrupt(path: str, why: str) -> CheckpointError:
    ckpt = os.path.dirname(path)
    return CheckpointError(
        "checkpoint file",
        path,
        f"{why}: corrupted or edited after the checkpoint was written; "
        f"use an earlier {CHECKPOINTS}/step_* (training resumes from the newest "
        f"complete one once {os.path.basename(ckpt)} is moved away)",
    )


def verify_checkpoint(ckpt_dir: str, keys: Callable[[str], bool] | None = None) -> None:
    """Raise a one-line CheckpointError naming the first file whose size or digest differs from the
    manifest (or that is missing); warn once if the checkpoint predates manifests. `keys`: only
    the stored items of the tensors it accepts are checked in shard files (a reader of some
    tensors); every other file is always checked whole."""
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isdir(ckpt_dir):
        raise pruned_under_reader(ckpt_dir)
    if not os.path.isfile(path):
        writer = _manifest_era_writer(ckpt_dir)
        if writer is not None:
            raise CheckpointError(
                "checkpoint",
                ckpt_dir,
                f"has no {MANIFEST}, but its {META} says {writer} wrote it, "
                f"which always writes one: the checkpoint is damaged (files "
                f"lost or removed), so it cannot be verified; use an earlier "
                f"{CHECKPOINTS}/step_* (training resumes from the newest complete "
                f"one once {os.path.basename(ckpt_dir)} is moved away)",
            )
        warnings.warn(
            f"{ckpt_dir} has no {MANIFEST} (written by an older grow_megatron): its files are not verified",
            stacklevel=2,
        )
        return
    try:
        with open(path) as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest["algorithm"] != ALGORITHM:
            raise ValueError(f"unknown algorithm {manifest['algorithm']!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise _corrupt(path, f"cannot be parsed ({type(err).__name__}: {err})") from err
    for rel, entry in sorted(files.items()):
        full = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(full):
            raise pruned_under_reader(ckpt_dir) if not os.path.isdir(ckpt_dir) else _corrupt(full, "is missing")
        size = os.path.getsize(full)
        if size != entry["size"]:
            raise _corrupt(full, f"has {size} bytes where {entry['size']} were written")
        if "items" in entry:
            for offset, length, key, digest in entry["items"]:
                if (keys is None or keys(key)) and file_digest(full, offset, length) != digest:
                    raise _corrupt(
                        full,
                        f"its bytes {offset}..{offset + length} ({key}) differ from what was "
                        f"written ({ALGORITHM} digest)",
                    )
        elif file_digest(full) != entry["digest"]:
            raise _corrupt(full, f"its content differs from what was written ({ALGORITHM} digest)")


def _manifest_era_writer(ckpt_dir: str) -> str | None:
    """Who wrote `ckpt_dir`, if its meta.json shows a version that always writes a manifest
    (None for older checkpoints and for a meta.json that cannot be read: that is reported by
    its reader)."""
    try:
        with open(os.path.join(ckpt_dir, META), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not any(k in meta for k in MANIFEST_ERA_KEYS):
        return None
    return str(meta.get("written_by") or "a grow_megatron version with manifests")


@contextlib.contextmanager
def verifying(ckpt_dir: str, enabled: bool = True, keys: Callable[[str], bool] | None = None):
    """Verify `ckpt_dir` in a thread while the body loads it; the verdict is raised on exit,
    before the caller uses what it loaded. If the body fails (a torn file trips the reader), a
    manifest mismatch is the error reported: it names the file."""
    failure: list[BaseException] = []

    def run():
        try:
            verify_checkpoint(ckpt_dir, keys)
        except CheckpointError as err:
            failure.append(err)

    if not enabled:
        yield
        return
    thread = threading.Thread(target=run, name="verify-checkpoint", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        thread.join()
        if failure:
            raise failure[0] from None
        raise
    thread.join()
    if failure:
        raise failure[0]
