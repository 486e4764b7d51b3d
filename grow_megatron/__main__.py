import sys

from grow_megatron.cli import main

sys.exit(main())
