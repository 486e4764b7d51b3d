#!/usr/bin/env python
"""Checkpoint conversion from tools/: same as `grow-megatron convert ...` (see docs/convert.md).

python tools/convert.py to-hf runs/tiny_lidas /tmp/tiny_hf
python tools/convert.py from-hf /tmp/tiny_hf runs/from_hf
"""

import os
import sys

# Runnable from a checkout without `pip install -e .`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grow_megatron.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
