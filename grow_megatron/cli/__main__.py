"""`python -m grow_megatron.cli` (the torchrun form in examples/launch_torchrun.sh)."""

import sys

from grow_megatron.cli import main

sys.exit(main())
