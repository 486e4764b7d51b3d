"""A run's identity: what makes its steps one experiment, recorded at its first step and checked
at every resume.

The identity is the model's shape, the growth plan, the batch size, the optimizer's schedule,
the seed, the data sources with a digest of their content and the tokenizer with its digest.
Every checkpoint's meta.json carries the identity it was trained under (`identity`); a resume
whose config gives another value for any of these fields is refused in one line naming each
field, its recorded value and the new one, with the ways forward. Other fields (layout,
precision, kernels, micro-batch size, logging, checkpointing) say how a run is computed, not
what it is, and may change at any resume.

Some changes are deliberate: `train.steps` (training a run further, optim.on_extend says what
the LR does) always is, and `--set accept_changes=[FIELD,...]` declares others deliberate
(another data mix from here on, another LR). Each is recorded with the step it took effect in
RUN_DIR/config_history.jsonl (config.yaml holds the config the run follows now). The model's
shape, the growth plan, the sequence length, the global batch size and the tokenizer cannot
be accepted: the checkpoint, the plan or the data position (step x global_batch_size samples
of seq_length tokens) would no longer fit; `grow-megatron grow` or a new run_dir do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from grow_megatron.config.base import ConfigError, from_dict, to_dict
from grow_megatron.config.model import ModelConfig
from grow_megatron.config.run import RunConfig, dump_run_config, read_yaml
from grow_megatron.config.rundir import RunDir
from grow_megatron.data.assets import default_corpus_path, default_tokenizer_path
from grow_megatron.engine.checkpoint import file_digest

EXTENDABLE = ("train.steps",)
"""Identity fields a resume may change without declaring it (training a run further)."""

FIXED = ("model.", "growth.", "train.global_batch_size", "data.tokenizer")
"""Identity fields (or prefixes) no `accept_changes` can change: what the checkpoint, the
growth plan or the data position depends on."""

_MODEL_NOT_IDENTITY = ("preset", "kernels")
_GROWTH = ("operator", "block_size", "function_preserving", "alpha", "grow_steps")
_OPTIM = (
    "lr",
    "min_lr",
    "warmup_steps",
    "decay_steps",
    "decay_style",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "clip_grad",
)
_DATA = ("preset", "tokenizer", "tokenizer_vocab_size", "eod_token", "text_field", "split", "eod_mask_loss")
_HUB = "hf:"


def history_path(run_dir: str) -> str:
    return RunDir(run_dir).config_history


def _digest(path: str, cache: dict, seen: dict) -> str | None:
    """xxh3-128 of a local file, or of a directory's files (names and contents); None for a hub
    name or a path that is not there. `cache`: {path: [size, mtime_ns, digest]} of an earlier
    record, reused for files whose size and mtime did not change (a dataset of many GB is read
    once, not at every resume); `seen` collects this call's entries."""
    if not path or path.startswith(_HUB) or not os.path.exists(path):
        return None
    if os.path.isfile(path):
        st = os.stat(path)
        hit = cache.get(path)
        digest = hit[2] if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns else file_digest(path)
        seen[path] = [st.st_size, st.st_mtime_ns, digest]
        return digest
    parts = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            parts.append(f"{os.path.relpath(full, path)}:{_digest(full, cache, seen)}")
    return _digest_text("\n".join(parts))


def _digest_text(text: str) -> str:
    import xxhash  # (engine.checkpoint.integrity's hash; a text digest needs no file)

    return xxhash.xxh3_128(text.encode()).hexdigest()


def run_identity(cfg: RunConfig, cache: dict | None = None) -> dict:
    """{"fields": {dotted field: value}, "file_stats": digest cache} of `cfg`'s run. `cache`:
    the file_stats of the identity recorded earlier."""
    cache, seen = dict(cache or {}), {}
    model = to_dict(cfg.model)
    fields: dict[str, Any] = {f"model.{k}": v for k, v in model.items() if k not in _MODEL_NOT_IDENTITY}
    fields.update({f"growth.{k}": getattr(cfg.growth, k) for k in _GROWTH})
    fields.update(
        {
            "train.steps": cfg.train.steps,
            "train.global_batch_size": cfg.train.global_batch_size,
            "train.seed": cfg.train.seed,
        }
    )
    fields.update({f"optim.{k}": getattr(cfg.optim, k) for k in _OPTIM})
    data = to_dict(cfg.data)
    fields.update({f"data.{k}": data[k] for k in _DATA})
    fields["data.datasets"] = data["datasets"]
    sources = [ds.path for ds in cfg.data.datasets] or ([] if cfg.data.preset else [default_corpus_path()])
    fields["data.content"] = [_digest(p, cache, seen) for p in sources]
    fields["data.tokenizer_content"] = _digest(cfg.data.tokenizer or default_tokenizer_path(), cache, seen)
    return {"fields": fields, "file_stats": seen}


def legacy_identity(run_dir: str) -> dict | None:
    """The identity of a run whose checkpoint predates recorded identities (or was written by
    `grow` / `convert from-hf`): from its config.yaml, read before this run replaces it; None
    without one. It has no content digests (they are not compared)."""
    path = RunDir(run_dir).config
    if not os.path.isfile(path):
        return None
    try:
        raw = read_yaml(path)
        raw["model"] = ModelConfig.from_preset_dict(dict(raw.get("model") or {}))
        cfg = from_dict(RunConfig, raw)
    except ConfigError:
        return None
    fields = run_identity(cfg)["fields"]
    for key in ("data.content", "data.tokenizer_content"):
        fields.pop(key)
    return {"fields": fields, "file_stats": {}}


def _fixed(key: str) -> bool:
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FIXED)


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 160 else text[:157] + "..."


def identity_changes(recorded: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """{field: (recorded value, current value)} of the fields both identities have and that
    differ."""
    old, new = recorded["fields"], current["fields"]
    return {k: (old[k], new[k]) for k in sorted(old) if k in new and old[k] != new[k]}


def check_changes(
    diff: dict[str, tuple[Any, Any]], accepted: list[str], step: int, checkpoint: str, run_dir: str
) -> None:
    """Refuse, in one line, the changes that are neither extensions nor accepted. An accepted
    field may not be a fixed one; one that is not changed is no error (the same command runs
    again after a preemption, when the change is already recorded)."""
    for key in accepted:
        if _fixed(key):
            raise ConfigError(
                "accept_changes",
                key,
                "cannot be accepted on resume: the checkpoint, the growth plan "
                "or the data position depend on it; use `grow-megatron grow` "
                "(another depth) or a new run_dir",
            )
    refused = {k: v for k, v in diff.items() if k not in EXTENDABLE and k not in accepted}
    if not refused:
        return
    what = "; ".join(f"{k}: recorded {_show(a)}, now {_show(b)}" for k, (a, b) in refused.items())
    acceptable = [k for k in refused if not _fixed(k)]
    ways = ["use a new run_dir for the changed run", "`grow-megatron grow` for another depth"]
    if acceptable:
        ways.append(
            f"or, to change it from step {step} on deliberately (recorded in {history_path(run_dir)}), "
            f"--set accept_changes=[{','.join(acceptable)}]"
        )
    fixed = [k for k in refused if _fixed(k)]
    if fixed:
        ways.append(f"({', '.join(fixed)} cannot change within a run)")
    raise ConfigError(
        "config",
        run_dir,
        f"differs from the run it resumes ({checkpoint}, step {step}) in {what}: "
        f"resume with the run's config ({RunDir(run_dir).config}), or " + ", ".join(ways),
    )


def describe_changes(diff: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in diff.items())


def _append(run_dir: str, record: dict, fresh: bool) -> None:
    path = history_path(run_dir)
    with open(path, "w" if fresh else "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def record_start(cfg: RunConfig, identity: dict, step: int = 0) -> None:
    """A new run: its history starts with its config and identity (at step 0, or where a run
    without a history, say one `grow` or `convert from-hf` wrote, is first trained)."""
    _append(
        cfg.run_dir, {"step": step, "kind": "start", "identity": identity["fields"], "config": to_dict(cfg)}, fresh=True
    )


def has_history(run_dir: str) -> bool:
    return os.path.isfile(history_path(run_dir))


def record_changes(cfg: RunConfig, step: int, diff: dict[str, tuple[Any, Any]]) -> None:
    """Deliberate changes (extensions, accepted fields) taking effect at `step`."""
    _append(
        cfg.run_dir,
        {
            "step": step,
            "kind": "change",
            "changes": {k: {"from": a, "to": b} for k, (a, b) in diff.items()},
            "config": to_dict(cfg),
        },
        fresh=False,
    )


def read_history(run_dir: str) -> list[dict]:
    path = history_path(run_dir)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_current_config(cfg: RunConfig) -> None:
    """config.yaml: the config the run follows now (written whole, then renamed over the old one:
    a reader never sees half of it). `accept_changes` is not kept: it declares one resume's
    changes, not the run's."""
    cur = dataclasses.replace(cfg, accept_changes=[])
    path = RunDir(cfg.run_dir).config
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dump_run_config(cur))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
