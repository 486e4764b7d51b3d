"""Train a config given as overrides in this process (or as a torchrun worker); used by the
fault tests as a real process to signal and kill. Prints a JSON line with the result on rank 0."""

import json
import os
import sys

if __name__ == "__main__":
    from grow_megatron.config.run import load_run_config
    from grow_megatron.engine.distributed import shutdown_distributed, world_size_from_env
    from grow_megatron.training.loop import train

    cfg = load_run_config(None, sys.argv[1:], world_size=world_size_from_env())
    try:
        res = train(cfg)
    finally:
        shutdown_distributed()
    if os.environ.get("RANK", "0") == "0":
        print(
            json.dumps(
                {"start": res.start_step, "end": res.end_step, "losses": {str(k): v for k, v in res.losses.items()}}
            ),
            flush=True,
        )
