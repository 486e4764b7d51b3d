#!/usr/bin/env python
"""Cost of checkpoint verification (manifest digests) against the load it guards, at a real shape.

  python tools/bench_verify.py [--preset smollm-360m] [--layers N] [--repeat 3] [--dir DIR] [--json FILE]

Writes one checkpoint the way training does (torch DCP FileSystemWriter in this process, then
manifest.json): the preset's global tensors in fp32, the weights plus the three optimizer
states per parameter (fp32 main copy, exp_avg, exp_avg_sq), as a resume reads them. Then,
side by side in one process and alternating, `repeat` times each:

- verify:            integrity.verify_checkpoint alone (xxh3-128 of every file, 16 MiB reads)
- full load:         every tensor read back, unverified (what a training resume read before)
- full load+verify:  the same inside integrity.verifying (the verification thread reads the
                     files while the load does: what load_checkpoint / read_global_tensors do now)
- model load:        the weights only, unverified (what convert / eval / analyze read)
- verify model:      integrity.verify_checkpoint of the weights' stored items only (and every
                     small file), what NativeReader checks before convert / eval / analyze read
- model load+verify: the two in sequence, as NativeReader does them

and reports the medians and the ratios. Whether the files come from the page cache or the
disk depends on the machine (this benchmark does not drop caches on a shared machine);
the output says how much of the checkpoint the page cache held (/proc/meminfo Cached).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed.checkpoint as dcp
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grow_megatron.config.model import PRESETS  # noqa: E402
from grow_megatron.engine.checkpoint.integrity import verify_checkpoint, verifying, write_manifest  # noqa: E402

STATES = ("param", "exp_avg", "exp_avg_sq")


def global_shapes(preset: str, layers: int | None) -> dict[str, tuple[int, ...]]:
    """The checkpoint's model tensors (layers stacked on a leading axis, as megatron stores them)."""
    p = PRESETS[preset]
    L, H, F = layers or p["num_layers"], p["hidden_size"], p["ffn_hidden_size"]
    kv = p["num_query_groups"] * H // p["num_attention_heads"]
    return {
        "embedding.word_embeddings.weight": (p["vocab_size"], H),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": (L, H),
        "decoder.layers.self_attention.linear_qkv.weight": (L, H + 2 * kv, H),
        "decoder.layers.self_attention.linear_proj.weight": (L, H, H),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (L, H),
        "decoder.layers.mlp.linear_fc1.weight": (L, 2 * F, H),
        "decoder.layers.mlp.linear_fc2.weight": (L, H, F),
        "decoder.final_layernorm.weight": (H,),
    }


def _cached_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Cached:"))
    except (OSError, StopIteration):
        return 0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm-360m")
    ap.add_argument("--layers", type=int, help="fewer layers for a quick try (default: the preset's)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", help="where to write the checkpoint (default: a temporary directory, removed)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    if PRESETS.get(args.preset, {}).get("vocab_size") is None:
        fixed = ", ".join(k for k, v in PRESETS.items() if v.get("vocab_size"))
        ap.error(f"--preset {args.preset}: needs a preset with a fixed vocab_size ({fixed})")
    shapes = global_shapes(args.preset, args.layers)
    model_keys = [f"model.{k}" for k in shapes]
    keys = model_keys + [f"optimizer.{s}.{k}" for s in STATES for k in shapes]
    spec = {k: shapes[k.split(".", 2)[-1] if k.startswith("optimizer.") else k[len("model.") :]] for k in keys}
    params = sum(torch.Size(s).numel() for s in shapes.values())
    root = args.dir or tempfile.mkdtemp(prefix="bench_verify_")
    ckpt = os.path.join(root, "step_00000000")
    os.makedirs(ckpt, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(spec[k], generator=gen) for k in tqdm(keys, desc="tensors")}
    t_save = timed(lambda sd=sd: dcp.save(sd, storage_writer=dcp.FileSystemWriter(ckpt, thread_count=2), no_dist=True))
    t_manifest = timed(lambda: write_manifest(ckpt))
    del sd
    size = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt))

    def load(which):
        out = {k: torch.empty(spec[k]) for k in which}
        dcp.load(out, storage_reader=dcp.FileSystemReader(ckpt), no_dist=True)

    def load_verified():
        with verifying(ckpt):
            load(keys)

    def is_model(key: str) -> bool:
        return key.startswith("model.")

    def model_load_verified():  # what NativeReader (convert, eval, analyze) checks: the weights' items
        verify_checkpoint(ckpt, keys=is_model)
        load(model_keys)

    times: dict[str, list[float]] = {
        "verify": [],
        "full_load": [],
        "full_load_verified": [],
        "model_load": [],
        "verify_model": [],
        "model_load_verified": [],
    }
    for _ in tqdm(range(args.repeat), desc="rounds"):
        times["verify"].append(timed(lambda: verify_checkpoint(ckpt)))
        times["full_load"].append(timed(lambda: load(keys)))
        times["full_load_verified"].append(timed(load_verified))
        times["model_load"].append(timed(lambda: load(model_keys)))
        times["verify_model"].append(timed(lambda: verify_checkpoint(ckpt, keys=is_model)))
        times["model_load_verified"].append(timed(model_load_verified))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "preset": args.preset,
        "layers": args.layers or PRESETS[args.preset]["num_layers"],
        "params": params,
        "checkpoint_bytes": size,
        "files": len(os.listdir(ckpt)),
        "save_s": round(t_save, 3),
        "manifest_write_s": round(t_manifest, 3),
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "verify_over_full_load": round(med["verify"] / med["full_load"], 4),
        "verified_full_load_over_full_load": round(med["full_load_verified"] / med["full_load"], 4),
        "page_cache_GB": round(_cached_bytes() / 1e9, 2),
        "verify_over_model_load": round(med["verify"] / med["model_load"], 4),
        "verify_model_over_model_load": round(med["verify_model"] / med["model_load"], 4),
        "verified_model_load_over_model_load": round(med["model_load_verified"] / med["model_load"], 4),
        "verify_GBps": round(size / med["verify"] / 1e9, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if not args.dir:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
