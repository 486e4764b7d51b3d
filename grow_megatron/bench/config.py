"""Options of `grow-megatron bench` and the device peak table used for MFU."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from grow_megatron.config.options import cli, comma_list

# Dense (no sparsity) bf16 tensor-core peaks from the vendor datasheets, in FLOP/s, matched
# against torch.cuda.get_device_name() in order (first substring hit wins, so the PCIe H100
# comes before the generic "H100", whose 80GB HBM3 part is the SXM board). The MFU denominator
# of docs/method.md §6 is the H100 SXM figure; anything not listed needs --peak-tflops.
DEVICE_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
)


def peak_flops_for(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by name, or None when it is not in DEVICE_PEAK_BF16."""
    for key, peak in DEVICE_PEAK_BF16:
        if key.lower() in device_name.lower():
            return peak
    return None


@dataclass
class BenchConfig:
    """What `grow-megatron bench` measures and how."""

    config: str = field(metadata=cli(positional=True))
    """YAML run config (grow_megatron.config.run): model shape, growth plan, optimizer."""
    overrides: list[str] = field(default_factory=list, metadata=cli(flag="--set", append=True, metavar="KEY=VALUE"))
    """`section.field=value` overrides applied to the run config (as `grow-megatron train --set`), e.g. --set
    model.kernels=off (repeatable)."""
    steps_per_stage: int = 6
    """Timed steps per measurement (static model, each stage, HF baseline); the figure is their median."""
    warmup: int = 3
    """Untimed steps before each measurement (allocator growth, cuBLAS heuristics, autotuning, compilation)."""
    batch: int | None = None
    """Sequences per micro-batch per data-parallel rank; default the config's train.micro_batch_size."""
    microbatches: int = 1
    """Micro-batches accumulated per optimizer step."""
    seq: int | None = None
    """Sequence length; default the config's model.seq_length."""
    vocab: int | None = None
    """Vocabulary size when the config leaves it to the tokenizer (random tokens need no tokenizer)."""
    total_steps: int = 100
    """Length of the scaled-down grown-vs-static run: the config's PROP schedule with its proportions
    (grow_steps / train.steps) kept, compressed to this many optimizer steps."""
    hf_baseline: bool = True
    """Also time transformers' LlamaForCausalLM with the same shapes (single process only)."""
    hf_compile: bool = True
    """Time the HF baseline under torch.compile as well as eager (GPU only; never in a dry run)."""
    parts: tuple[str, ...] = field(
        default=("static", "stages", "schedule", "hf"), metadata=cli(nargs=None, type=comma_list)
    )
    """Which measurements to run: a comma list among static, stages, schedule, hf (default: all)."""
    peak_tflops: float | None = None
    """Dense bf16 peak (TFLOP/s) for MFU (default: by GPU name from DEVICE_PEAK_BF16, H100 = 989)."""
    out: str = "runs/bench"
    """Directory for report.json, report.md and throughput.png."""
    dry_run: bool = False
    """CPU check of the whole code path: tiny shapes, 1-2 steps per measurement, fp32, no
    torch.compile, no fused AdamW. The numbers mean nothing; the report's form is what is tested."""
    seed: int = 0
    """Seed of the initial weights and of the random tokens."""
    profile: bool = False
    """Also run `profile_steps` steps of the static model (and of each HF variant) under
    torch.profiler and report where the device time goes (report.json `profile`)."""
    profile_steps: int = 2
    """Steps per profile: few, since the profile's parsing costs seconds per thousand kernels."""

    PARTS = ("static", "stages", "schedule", "hf")


# Dry-run shape: the config's depth/growth structure is kept (capped to three blocks), the
# width is shrunk so that every stage of every part runs on two CPU cores in seconds.
DRY_RUN_MODEL = MappingProxyType(
    {
        "hidden_size": 64,
        "ffn_hidden_size": 160,
        "num_attention_heads": 4,
        "num_query_groups": 2,
        "vocab_size": 256,
        "seq_length": 32,
    }
)
DRY_RUN_LIMITS = MappingProxyType({"steps_per_stage": 2, "warmup": 1, "batch": 2, "total_steps": 12})
