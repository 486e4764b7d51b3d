#!/usr/bin/env python
"""Training throughput benchmark: a thin wrapper of `grow-megatron bench` (see docs/bench.md).

python tools/bench_train.py examples/smollm360m_lidas.yaml --out runs/bench_360m   # GPU
python tools/bench_train.py examples/tiny_lidas.yaml --dry-run --out /tmp/bench   # CPU check
"""

import sys

from grow_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
