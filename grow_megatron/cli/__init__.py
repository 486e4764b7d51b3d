"""The `grow-megatron` command: a thin dispatcher over subcommands.

Each subcommand is a module of this package (its flags and output; the work is done by the
library below it) and exposes `main(argv) -> int`. Modules are imported lazily so that `grow-megatron flops` does not pay for importing
megatron-core, and a failure in one subcommand's imports cannot break the others.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from grow_megatron import __version__
from grow_megatron.config.base import UserError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("grow_megatron.cli.train", "train a (depth-grown) model from a YAML run config"),
    "data": ("grow_megatron.cli.data", "prepare tokenizers and indexed datasets"),
    "convert": ("grow_megatron.cli.convert", "convert checkpoints to and from Hugging Face Llama"),
    "eval": ("grow_megatron.cli.eval", "held-out NLL and reasoning-primitive evaluation"),
    "loop-sweep": (
        "grow_megatron.cli.loop_sweep",
        "inference-time looping of blocks: primitives and NLL per (block, repeats)",
    ),
    "analyze": ("grow_megatron.cli.analyze", "depth analyses (tuned lens, depth score, interventions, ...)"),
    "flops": ("grow_megatron.cli.flops", "training FLOPs of a static vs a grown run (docs/method.md §6)"),
    "bench": ("grow_megatron.cli.bench", "timed grown-vs-static training throughput"),
    "bench-growth": ("grow_megatron.cli.bench_growth", "latency and memory of one growth of a trained engine"),
    "plan": ("grow_megatron.cli.plan", "print the growth plan (stages, depths, source maps) of a config"),
    "grow": ("grow_megatron.cli.grow", "grow a trained checkpoint on disk, to keep training it deeper"),
    "compare-runs": (
        "grow_megatron.cli.compare_runs",
        "loss of runs against steps, tokens and FLOPs; loss at equal FLOPs",
    ),
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
        print(__version__)
        return 0
    if name not in SUBCOMMANDS:
        print(f"grow-megatron: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    with _sigterm_raises():
        try:
            return _dispatch(name, rest)
        except Terminated as stop:
            return _report_termination(name, stop)


class Terminated(BaseException):
    """SIGTERM outside the training loop (which takes it as a stop at the next step boundary):
    a BaseException like KeyboardInterrupt, so that no `except Exception` swallows it, and the
    `finally` blocks on the way out still run."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """For the command's lifetime, SIGTERM raises Terminated instead of killing the process
    silently. A torchrun agent sends SIGTERM to the survivors as soon as one worker dies; with
    the default action a survivor that is still reporting why it stopped (a peer that exited)
    died mid-report, and its one line was lost (seen in CI, about one run in three)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        # One stop is enough: the copy of a group signal that a torchrun worker also gets from
        # its agent must not interrupt the report of the first.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _report_termination(name: str, stop: Terminated) -> int:
    """One line for a SIGTERM: the error it interrupted, if that error has a line of its own
    (a peer that exited, the user's error), else the stop itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    err = stop.__context__
    while err is not None:
        if (said := _one_line(err)) is not None:
            return _say(name, *said)
        err = err.__context__
    return _say(name, "stopped by SIGTERM", 128 + signal.SIGTERM)


def _one_line(err: BaseException) -> tuple[str, int] | None:
    """(line, exit code) for the errors that are one line at the CLI whatever the command: the
    user's (bad configuration, data, checkpoint, environment: 2) and a peer rank's exit (1);
    None for any other error."""
    if isinstance(err, UserError):
        return str(err), 2
    # Only a command that started a process group can see a peer exit.
    if "grow_megatron.engine.distributed" not in sys.modules:
        return None
    from grow_megatron.engine.distributed import peer_exit_message

    line = peer_exit_message(err)
    return None if line is None else (line, 1)


def _say(name: str, line: str, code: int) -> int:
    print(f"grow-megatron {name}: {line}", file=sys.stderr)
    return code


def _dispatch(name: str, rest: list[str]) -> int:
    try:
        with known_warnings_quiet():
            # Inside the context: most of megatron's known warnings come at import.
            module = importlib.import_module(SUBCOMMANDS[name][0])
            return int(module.main(rest) or 0)
    except UserError as err:
        # Bad configuration, data, a bad checkpoint or a full disk is the user's to fix: one
        # line, no traceback (the error's type says which).
        return _say(name, *_one_line(err))
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
    except Exception as err:
        # A peer rank that died mid-collective: one line on each survivor instead of gloo's
        # traceback.
        said = _one_line(err)
        if said is None:
            raise
        return _say(name, *said)
    except BaseException as err:
        # torch DCP wraps a reader's or writer's error in CheckpointException (a BaseException
        # whose text holds a traceback per rank): a missing or unusable path in it is the same
        # one line as above (e.g. a checkpoint file removed while it was read).
        path_err = _checkpoint_path_error(err)
        if path_err is None:
            raise
        changed = (
            " (the checkpoint changed while it was read: a running trainer may have replaced or pruned it; "
            "run again to read its newest checkpoint)"
            if isinstance(path_err, FileNotFoundError)
            else ""
        )
        print(f"grow-megatron {name}: {path_err.filename!r}: {_os_reason(path_err)}{changed}", file=sys.stderr)
        return 2


def _checkpoint_path_error(err: BaseException) -> OSError | None:
    """The path error inside a torch DCP CheckpointException (its failures: {rank: (exception,
    traceback)}), or None."""
    if type(err).__name__ != "CheckpointException":
        return None
    for failure in (getattr(err, "failures", None) or {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if (
            isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError))
            and exc.filename
        ):
            return exc
    return None


def _os_reason(err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied (choose a path you can read/write)"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(err, NotADirectoryError):
        return "a part of this path is a file, not a directory"
    return "no such file or directory"


# Warnings that megatron-core and torch give on every run of this package and that ask nothing
# of our user: megatron's notes at import that the optional TransformerEngine and Apex kernels
# are missing (it falls back to its local ones, which is what we run), the deprecations of
# defaults, collectives and ShardedTensor that megatron itself passes or calls, and a .grad
# read of a non-leaf tensor during megatron's step (on CPU it surfaces through compat.cpu's
# torch function mode, which makes the call). Each is matched by its exact message start, category and emitting module, so
# that any other warning, ours included, still shows. (category, message regex, module regex)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (UserWarning, r"Transformer Engine and Apex are not installed\. Falling back to ", r"megatron[._]"),
    (UserWarning, r"Apex is not installed\. Falling back to Torch Norm", r"megatron\.core\."),
    (UserWarning, r"full scope is deprecated\. Use empty cuda_graph_scope", r"megatron\.core\.transformer\."),
    (
        UserWarning,
        r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
        r"(megatron\.core\.|grow_megatron\.compat\.cpu$)",
    ),
    (
        FutureWarning,
        r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        r"torch\.distributed\.",
    ),
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor", r"(megatron|torch)\."),
)


@contextlib.contextmanager
def known_warnings_quiet() -> Iterator[None]:
    """KNOWN_WARNINGS silenced for the duration of the context (a command's imports and run),
    the caller's warning filters restored after it: the filters are process-wide, and a test
    or a program that calls a command's main must not lose its warnings."""
    with warnings.catch_warnings():
        for category, message, module in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


if __name__ == "__main__":
    sys.exit(main())
