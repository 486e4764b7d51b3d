"""build_datasets under torch.distributed (2 gloo ranks): rank 0 prepares, every rank gets the
same samples, and an error found on rank 0 reaches every rank as the same ConfigError."""

from __future__ import annotations

import json
import os

from dist_helpers import run_ranks


def _worker(rank: int, world: int, cache: str, good: str, bad: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from grow_megatron.config.base import ConfigError
    from grow_megatron.config.data import DataConfig, DatasetSpec
    from grow_megatron.data.datasets import build_datasets, get_microbatches

    dist.init_process_group("gloo", rank=rank, world_size=world)  # env:// (run_ranks sets it)
    res = {}
    cfg = DataConfig(datasets=[DatasetSpec(path=good)], cache_dir=cache, split="90,10,0")
    train, _ = build_datasets(cfg, seq_length=16, seed=5, train_samples=64, valid_samples=4, progress=False)
    mb = get_microbatches(train, step=1, global_batch_size=8, micro_batch_size=2, dp_rank=rank, dp_size=world)
    res["tokens"] = torch.cat([m["tokens"] for m in mb]).tolist()
    try:
        build_datasets(
            DataConfig(datasets=[DatasetSpec(path=bad)], cache_dir=cache),
            seq_length=16,
            seed=5,
            train_samples=64,
            valid_samples=4,
            progress=False,
        )
    except ConfigError as err:
        res["error"] = str(err)
    dist.barrier()
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(res, f)


def test_two_ranks(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps({"text": f"document {i} " + "word " * (i % 17)}) + "\n" for i in range(120)))
    bad.write_text(json.dumps({"body": "no text field"}) + "\n")
    args = (2, str(tmp_path / "cache"), str(good), str(bad), str(tmp_path / "res"))
    run_ranks(2, _worker, *args, out_dir=str(tmp_path / "ranks"))
    r0, r1 = (json.load(open(tmp_path / f"res.{r}")) for r in range(2))
    assert r0["error"] == r1["error"] and "is not a column of" in r0["error"]
    # DP ranks read disjoint halves of the same global batch; compare with a single-process build.
    from grow_megatron.config.data import DataConfig, DatasetSpec
    from grow_megatron.data.datasets import build_datasets, get_microbatches

    train, _ = build_datasets(
        DataConfig(datasets=[DatasetSpec(path=str(good))], cache_dir=str(tmp_path / "cache1"), split="90,10,0"),
        seq_length=16,
        seed=5,
        train_samples=64,
        valid_samples=4,
        progress=False,
    )
    ref = get_microbatches(train, step=1, global_batch_size=8, micro_batch_size=8)[0]["tokens"].tolist()
    assert r0["tokens"] + r1["tokens"] == ref
    prepared = tmp_path / "cache" / "prepared"
    bad_dir = [d for d in os.listdir(prepared) if d.startswith("bad-")][0]
    assert os.listdir(prepared / bad_dir) == []  # nothing half-written, no lock file
