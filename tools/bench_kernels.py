#!/usr/bin/env python
"""Benchmark our Triton kernels against torch eager, torch.compile and Liger-Kernel.

    python tools/bench_kernels.py --out kernel_bench.json     # on a CUDA GPU
    python tools/bench_kernels.py --dry-run --out /tmp/k.json # CPU: checks the script only

Without a GPU (and without --dry-run) it exits with code 2. See docs/kernels.md.
"""

import sys

if "--dry-run" in sys.argv:
    from grow_megatron.engine.device import Device

    Device.local().interpret_triton_on_cpu()  # before triton is first imported

from grow_megatron.kernels.bench import main

if __name__ == "__main__":
    sys.exit(main())
