"""`grow-megatron bench`: timed training throughput of the engine, static and grown, next to
Hugging Face Llama (eager and torch.compile), with FLOPs-based MFU (docs/method.md §6).

    grow-megatron bench examples/smollm360m_lidas.yaml --out runs/bench_360m      # one GPU
    torchrun --nproc-per-node 2 -m grow_megatron.cli bench CONFIG --set parallel.tensor_parallel=2
    grow-megatron bench examples/tiny_lidas.yaml --dry-run --out /tmp/bench       # CPU check

Writes report.json, report.md and throughput.png into --out (rank 0) and prints the tables.
Without a GPU it refuses (exit 2) unless --dry-run. See docs/bench.md.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any

from grow_megatron.bench.config import BenchConfig, peak_flops_for
from grow_megatron.cli.flags import command_parser, options_from_args


def build_parser() -> argparse.ArgumentParser:
    return command_parser("grow-megatron bench", __doc__, BenchConfig)


def _log(rank0: bool, msg: str) -> None:
    if rank0:
        print(f"[bench] {msg}", flush=True)


def _one_line(r: dict) -> str:
    mfu = f", MFU {100 * r['mfu']:.1f}% (causal {100 * r['mfu_causal']:.1f}%)" if r.get("mfu") is not None else ""
    return f"{r['tokens_per_s']:,.0f} tokens/s, {r['tflops']:.1f} TFLOP/s{mfu}, peak {r['peak_memory_gib']:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bc = options_from_args(BenchConfig, build_parser().parse_args(argv))
    # torch (seconds) once the arguments are good: --help and a mistyped flag answer at once.
    import torch

    gpu = torch.cuda.is_available()
    if not gpu and not bc.dry_run:
        print(
            "grow-megatron bench: no CUDA GPU found; the benchmark needs one (use --dry-run for the CPU check "
            "of the code path)",
            file=sys.stderr,
        )
        return 2
    if bc.dry_run and not gpu:
        from grow_megatron.engine.device import Device

        Device("cpu").interpret_triton_on_cpu()  # as the test suite: kernels, if any, run interpreted
    return run(bc, argv)


def run(bc: BenchConfig, argv: list[str]) -> int:
    # torch and megatron-core (ten seconds), as in main; after TRITON_INTERPRET is set.
    import torch

    from grow_megatron.bench import report as bench_report
    from grow_megatron.bench.runner import EngineBench, hf_measure, on_gpu, resolve
    from grow_megatron.engine.distributed import device_context, init_distributed, world_size_from_env

    gpu = on_gpu()
    bc, setup = resolve(bc, world_size=world_size_from_env(), on_gpu=gpu)
    cfg = setup.cfg
    peak = bc.peak_tflops * 1e12 if bc.peak_tflops else (peak_flops_for(torch.cuda.get_device_name()) if gpu else None)
    peak_source = (
        "--peak-tflops"
        if bc.peak_tflops
        else "device table"
        if peak
        else "none: unknown device, MFU not computed (give --peak-tflops)"
    )
    errors: dict[str, str] = {}
    report: dict[str, Any] = {"notes": [], "errors": errors}

    with device_context():
        lay = init_distributed(
            cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel, bc.seed, vpp=cfg.parallel.virtual_stages
        )
        rank0 = lay.is_logging_rank
        report["environment"] = bench_report.environment(
            argv,
            {"world_size": lay.world, "tp": lay.tp, "pp": lay.pp, "vpp": cfg.parallel.virtual_stages, "dp": lay.dp},
        )
        # The engine's tokens/s is the whole job's: MFU is over the peak of all its GPUs.
        eb = EngineBench(bc, setup, lay.dp, lay.tp, lay.pp, peak * lay.world if peak else None)
        report["settings"] = {
            "config": bc.config,
            "overrides": list(bc.overrides),
            "dry_run": bc.dry_run,
            "shape": {
                k: getattr(setup.shape, k)
                for k in (
                    "num_layers",
                    "hidden_size",
                    "ffn_hidden_size",
                    "num_attention_heads",
                    "num_query_groups",
                    "vocab_size",
                    "seq_length",
                )
            },
            "batch": setup.batch,
            "microbatches": setup.microbatches,
            "seq": setup.seq,
            "tokens_per_step": eb.tokens_per_step,
            "bf16": setup.bf16,
            "use_kernels": setup.use_kernels,
            "warmup": bc.warmup,
            "steps_per_stage": bc.steps_per_stage,
            "total_steps": bc.total_steps,
            "profile_steps": bc.profile_steps if bc.profile else None,
            "parts": list(bc.parts),
            "peak_tflops": peak / 1e12 if peak else None,
            "peak_source": peak_source,
            "gpus": lay.world if gpu else 0,
            "growth": {
                "operator": cfg.growth.operator,
                "block_size": cfg.growth.block_size,
                "alpha": cfg.growth.alpha,
                "config_steps": cfg.train.steps,
                "config_grow_steps": cfg.grow_steps,
            }
            if cfg.growth.enabled
            else None,
        }

        def part(
            name: str, fn: Callable[[], Any], key: str | None = None, store: Callable[[Any], None] | None = None
        ) -> Any:
            """Run one measurement; a failure (out of memory, say) is recorded under `key` (default
            the part's name) and the rest goes on. The result is stored into the report (by
            `store`, default report[name]) before the report is written: a time limit's interrupt
            during the next part must not lose this one."""
            if name not in bc.parts:
                return None
            _log(rank0, f"{key or name} ...")
            try:
                r = fn()
                (store or (lambda v: report.__setitem__(name, v)))(r)
                return r
            except Exception as err:  # noqa: BLE001 -- reported in report.json, exit code 1
                errors[key or name] = f"{type(err).__name__}: {err}"
                if rank0:
                    traceback.print_exc()
                return None
            finally:
                if rank0:  # partial results survive a later crash or a time limit
                    bench_report.write_outputs(report, bc.out)

        part("static", eb.static)
        if report.get("static"):
            _log(rank0, f"static depth {report['static']['depth']}: {_one_line(report['static'])}")

    # HF before the grown parts: static vs HF + compile is the headline ratio, and a run cut
    # short by a time limit should lose the per-stage table rather than that.
    if "hf" in bc.parts and bc.hf_baseline:
        if lay.world > 1:
            report["notes"].append("HF baseline runs in single-process runs only (it has no TP/PP)")
        else:
            hf: dict[str, dict] = {}
            report["hf"] = hf
            variants = [("eager", False)] + ([("compile", True)] if bc.hf_compile and gpu and not bc.dry_run else [])

            def store_hf(name: str, r: dict | None) -> None:
                hf[name] = r if r is not None else {"skipped": errors.get(f"hf_{name}", "failed")}
                if report.get("static"):
                    report["static_vs_hf"] = {
                        k: report["static"]["tokens_per_s"] / v["tokens_per_s"]
                        for k, v in hf.items()
                        if "tokens_per_s" in v
                    }

            for name, compiled in variants:
                # One error key per variant: eager's failure must not mark a later compile as failed.
                r = part(
                    "hf",
                    lambda: hf_measure(setup, bc, compiled, peak),
                    key=f"hf_{name}",
                    store=lambda v: store_hf(name, v),
                )
                if r is None:
                    store_hf(name, None)
                if "tokens_per_s" in hf[name]:
                    _log(rank0, f"HF {name}: {_one_line(hf[name])}")
                # Saved before the next variant: a compile that outlasts a time limit keeps eager's result.
                if rank0:
                    bench_report.write_outputs(report, bc.out)

    with device_context():
        if setup.plan is None and ("stages" in bc.parts or "schedule" in bc.parts):
            report["notes"].append("the config has no growth (growth.operator: none): no stages, no grown run")
        else:
            part("schedule", eb.schedule)
            if report.get("schedule"):
                s = report["schedule"]
                _log(
                    rank0,
                    f"scaled run: predicted {s['predicted_speedup']:.3f}x, "
                    f"measured {s['measured_speedup']:.3f}x "
                    f"({100 * s['efficiency']:.1f}%), growth {s['growth_s']:.2f}s",
                )
            part("stages", eb.stages)
            for r in report.get("stages") or []:
                _log(rank0, f"stage {r['stage']} depth {r['depth']}: {_one_line(r)}")
    if rank0:
        paths = bench_report.write_outputs(report, bc.out)
        bench_report.print_summary(report)
        print(f"[bench] wrote {', '.join(paths.values())}", flush=True)
    if errors:
        print(f"grow-megatron bench: failed parts: {', '.join(errors)} (see report.json 'errors')", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
