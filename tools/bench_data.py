#!/usr/bin/env python
"""Data pipeline benchmark: tokenization throughput and data-loader overhead per training step.

  python tools/bench_data.py [--size-mb 100] [--steps 200] [--json runs/bench_data.json]

1. Generates a text corpus of --size-mb MB (jsonl shards; documents assembled from shuffled
   paragraphs of the embedded default corpus, so token statistics are real-ish English + code).
2. `prepare()` it with 1 and with 2 tokenizer worker processes (each worker single-threaded:
   TOKENIZERS_PARALLELISM=false), end to end (read + tokenize + write .bin/.idx): tokens/s.
   Also the bare tokenizer speed on one core (encode_batch on in-memory text, no I/O).
3. Data-loader overhead: `get_microbatches` for a tiny-model step (gbs 16 x seq 256, mbs 8)
   on the embedded default dataset: ms per step.
4. For scale, a plain-torch forward+backward of a tiny transformer (4 layers, width 128,
   4 heads, SwiGLU 512, vocab 4096, fp32, the same 16 x 256 batch) on this CPU: ms per step,
   and the loader's share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per tokenizer process: per-core numbers


def make_corpus(out_dir: str, size_mb: float, seed: int = 0, shard_mb: float = 25.0) -> tuple[int, int]:
    """Write ~size_mb MB of jsonl documents into out_dir; return (bytes of text, documents)."""
    from grow_megatron.data.corpus import iter_default_corpus

    paras = [p for d in iter_default_corpus() for p in d["text"].split("\n\n") if p.strip()]
    rng = random.Random(seed)
    target = int(size_mb * 1e6)
    written = docs = shard = 0
    f = None
    while written < target:
        if f is None or f.tell() > shard_mb * 1e6:
            if f:
                f.close()
            f = open(os.path.join(out_dir, f"shard_{shard:03d}.jsonl"), "w", encoding="utf-8")
            shard += 1
        text = "\n\n".join(rng.choice(paras) for _ in range(rng.randint(3, 40)))
        f.write(json.dumps({"text": text}) + "\n")
        written += len(text.encode("utf-8"))
        docs += 1
    f.close()
    return written, docs


def bench_tokenizer_core(tok, texts: list[str]) -> float:
    t0 = time.perf_counter()
    n = sum(len(e.ids) for e in tok._tok.encode_batch(texts, add_special_tokens=False))
    return n / (time.perf_counter() - t0)


def tiny_step_ms(batch: int, seq: int, vocab: int = 4096, width: int = 128, layers: int = 4, reps: int = 5) -> float:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.RMSNorm(width), nn.RMSNorm(width)
            self.qkv, self.o = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width, bias=False)
            self.up, self.down = nn.Linear(width, 2 * 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).view(b, s, 3, 4, width // 4).permute(2, 0, 3, 1, 4)
            x = x + self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, width))
            g, u = self.up(self.n2(x)).chunk(2, -1)
            return x + self.down(F.silu(g) * u)

    torch.manual_seed(0)
    emb = nn.Embedding(vocab, width)
    blocks = nn.Sequential(*[Block() for _ in range(layers)])
    norm = nn.RMSNorm(width)
    params = list(emb.parameters()) + list(blocks.parameters()) + list(norm.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq))
    times = []
    for r in range(reps + 1):
        t0 = time.perf_counter()
        h = norm(blocks(emb(x)))
        loss = F.cross_entropy((h @ emb.weight.t()).view(-1, vocab), x.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if r:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=100.0, help="generated corpus size in MB (default 100)")
    ap.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    ap.add_argument("--steps", type=int, default=200, help="loader steps to time")
    ap.add_argument("--gbs", type=int, default=16)
    ap.add_argument("--mbs", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json", default="runs/bench_data.json", help="where to write the results")
    ap.add_argument("--workdir", help="scratch directory (default: a temporary one, removed after)")
    args = ap.parse_args(argv)

    import torch

    from grow_megatron.bench.report import cpu_model
    from grow_megatron.config.data import DataConfig
    from grow_megatron.data.datasets import build_datasets, get_microbatches
    from grow_megatron.data.prepare import prepare
    from grow_megatron.data.tokenizer import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tmp = tempfile.TemporaryDirectory(dir=args.workdir) if not args.workdir else None
    work = args.workdir or tmp.name
    os.makedirs(work, exist_ok=True)
    res: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {cpu_model()}".strip(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "command": "python tools/bench_data.py " + " ".join(argv or sys.argv[1:]),
    }
    tok = load_tokenizer(None)

    src = os.path.join(work, "corpus")
    os.makedirs(src, exist_ok=True)
    t0 = time.perf_counter()
    nbytes, ndocs = make_corpus(src, args.size_mb)
    res["corpus"] = {"bytes": nbytes, "documents": ndocs, "generate_s": round(time.perf_counter() - t0, 2)}
    print(f"corpus: {nbytes / 1e6:.1f} MB, {ndocs} documents ({res['corpus']['generate_s']} s to generate)", flush=True)

    # Bare tokenizer on one core (no reading/writing).
    sample = []
    from grow_megatron.data.readers import iter_texts

    for texts in iter_texts(src):
        sample += texts
        if sum(map(len, sample)) > 10e6:
            break
    res["tokenizer_core_tokens_per_s"] = round(bench_tokenizer_core(tok, sample))

    res["prepare"] = []
    for w in [int(x) for x in args.workers.split(",")]:
        m = prepare(src, os.path.join(work, f"out_w{w}"), tok, num_workers=w, progress=False, force=True)
        row = {
            "workers": w,
            "seconds": m["seconds"],
            "tokens": m["tokens"],
            "tokens_per_s": round(m["tokens"] / m["seconds"]),
            "MB_per_s": round(nbytes / 1e6 / m["seconds"], 2),
        }
        res["prepare"].append(row)
        print(
            f"prepare, {w} worker(s): {row['tokens_per_s']:,} tokens/s ({row['MB_per_s']} MB/s, {m['seconds']} s)",
            flush=True,
        )

    # Loader overhead on the embedded default dataset.
    cfg = DataConfig(cache_dir=os.path.join(work, "cache"))
    train, _ = build_datasets(
        cfg,
        seq_length=args.seq,
        seed=1,
        train_samples=args.gbs * (args.steps + 10),
        valid_samples=0,
        tokenizer=tok,
        progress=False,
    )
    for s in range(5):  # warm the page cache and megatron's caches
        get_microbatches(train, step=s, global_batch_size=args.gbs, micro_batch_size=args.mbs)
    times = []
    for s in range(args.steps):
        t0 = time.perf_counter()
        get_microbatches(train, step=s, global_batch_size=args.gbs, micro_batch_size=args.mbs)
        times.append(1000 * (time.perf_counter() - t0))
    res["loader"] = {
        "gbs": args.gbs,
        "mbs": args.mbs,
        "seq": args.seq,
        "steps": args.steps,
        "ms_per_step_median": round(statistics.median(times), 3),
        "ms_per_step_mean": round(statistics.fmean(times), 3),
        "ms_per_step_p95": round(sorted(times)[int(0.95 * len(times))], 3),
    }
    step_ms = tiny_step_ms(args.gbs, args.seq)
    res["tiny_torch_step_ms"] = round(step_ms, 1)
    res["loader_share_of_tiny_step"] = round(res["loader"]["ms_per_step_median"] / step_ms, 5)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    print()
    print(f"{'measure':<52} {'value':>16}")
    print("-" * 69)
    print(f"{'tokenizer alone, 1 core (tokens/s)':<52} {res['tokenizer_core_tokens_per_s']:>16,}")
    for row in res["prepare"]:
        print(
            f"{'prepare end to end, ' + str(row['workers']) + ' worker(s) (tokens/s)':<52} {row['tokens_per_s']:>16,}"
        )
        print(f"{'prepare end to end, ' + str(row['workers']) + ' worker(s) (MB/s of text)':<52} {row['MB_per_s']:>16}")
    lo = res["loader"]
    loader = f"get_microbatches gbs {lo['gbs']} x seq {lo['seq']}, mbs {lo['mbs']} (ms/step, median)"
    print(f"{loader:<52} {lo['ms_per_step_median']:>16}")
    print(f"{'tiny torch fwd+bwd+AdamW, 4x128, same batch (ms/step)':<52} {res['tiny_torch_step_ms']:>16}")
    print(f"{'loader share of that step':<52} {100 * res['loader_share_of_tiny_step']:>15.2f}%")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"load average (1, 5, 15 min) at start {res['loadavg_start']}, at end {res['loadavg_end']}")
    print(f"\nwrote {args.json}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
