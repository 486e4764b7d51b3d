"""The `grow-megatron` command: a thin dispatcher over subcommands.

Each subcommand lives next to the library code it drives and exposes `main(argv) -> int`.
Modules are imported lazily so that `grow-megatron flops` does not pay for importing
megatron-core, and a failure in one subcommand's imports cannot break the others.
"""
from __future__ import annotations

import importlib
import sys
import warnings

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("grow_megatron.cli.train", "train a (depth-grown) model from a YAML run config"),
    "data": ("grow_megatron.cli.data", "prepare tokenizers and indexed datasets"),
    "convert": ("grow_megatron.cli.convert", "convert checkpoints to and from Hugging Face Llama"),
    "eval": ("grow_megatron.cli.eval", "held-out NLL and reasoning-primitive evaluation"),
    "loop-sweep": ("grow_megatron.eval.loop_sweep", "inference-time looping of blocks: primitives and NLL per (block, repeats)"),
    "analyze": ("grow_megatron.cli.analyze", "depth analyses (tuned lens, depth score, interventions, ...)"),
    "flops": ("grow_megatron.cli.flops", "training FLOPs of a static vs a grown run (SPEC 6)"),
    "bench": ("grow_megatron.cli.bench", "timed grown-vs-static training throughput"),
    "plan": ("grow_megatron.cli.plan", "print the growth plan (stages, depths, source maps) of a config"),
    "grow": ("grow_megatron.cli.grow", "grow a trained checkpoint on disk, to keep training it deeper"),
    "compare-runs": ("grow_megatron.training.compare_runs", "loss of runs against steps, tokens and FLOPs; loss at equal FLOPs"),
    "study": ("grow_megatron.cli.study", "train variants at equal tokens, evaluate, analyse, and write one report"),
}


def _usage() -> str:
    lines = ["usage: grow-megatron <command> [args...]", "", "commands:"]
    for name, (_, doc) in SUBCOMMANDS.items():
        lines.append(f"  {name:<13} {doc}")
    lines.append("")
    lines.append("Run `grow-megatron <command> --help` for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in ("-V", "--version"):
        from grow_megatron import __version__

        print(__version__)
        return 0
    if name not in SUBCOMMANDS:
        print(f"grow-megatron: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    _quiet_known_warnings()
    module = importlib.import_module(SUBCOMMANDS[name][0])
    from grow_megatron.config.base import ConfigError

    try:
        return int(module.main(rest) or 0)
    except ConfigError as err:
        # Bad configuration is the user's to fix: one line, no traceback.
        print(f"grow-megatron {name}: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        # A path the user gave that cannot be used, caught by no subcommand-specific check:
        # still the user's to fix, so the same one line (a missing-file bug in our own code
        # would name its path too, so nothing is hidden).
        if err.filename is None:
            raise
        print(f"grow-megatron {name}: {err.filename!r}: {_os_reason(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Commands that hold state (train, data prepare) clean up on the way out; the
        # traceback of wherever Ctrl-C landed tells the user nothing.
        print(f"grow-megatron {name}: interrupted", file=sys.stderr)
        return 130


def _os_reason(err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied (choose a path you can read/write)"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(err, NotADirectoryError):
        return "a part of this path is a file, not a directory"
    return "no such file or directory"


def _quiet_known_warnings() -> None:
    # megatron-core warns on import about optional accelerators (TransformerEngine, Apex) and
    # deprecations on paths it takes itself; expected here, they would drown the output.
    for pat in ("Transformer Engine and Apex are not installed", "Apex is not installed", ".*is deprecated.*",
                "The .grad attribute of a Tensor that is not a leaf", ".*torch.distributed.*",
                "Please use DTensor instead"):
        warnings.filterwarnings("ignore", message=pat)


if __name__ == "__main__":
    sys.exit(main())
