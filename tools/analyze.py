#!/usr/bin/env python
"""Depth analyses from tools/: same as `grow-megatron analyze ...` (see docs/analysis.md).

python tools/analyze.py depth-score runs/baseline_hf runs/midas_hf --data heldout.txt --out out/
"""

import os
import sys

# Runnable from a checkout without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grow_megatron.cli.analyze import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
