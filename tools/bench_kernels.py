#!/usr/bin/env python
"""Benchmark our Triton kernels against torch eager, torch.compile and Liger-Kernel.

    python tools/bench_kernels.py --out kernel_bench.json     # on a CUDA GPU
    python tools/bench_kernels.py --dry-run --out /tmp/k.json # CPU: checks the script only

Without a GPU (and without --dry-run) it exits with code 2. See docs/kernels.md.
"""

import os
import sys

if "--dry-run" in sys.argv:
    import torch

    # The interpreter must be chosen before triton is first imported.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

from grow_megatron.kernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
