"""The study runner: drives `grow-megatron train/convert/eval/analyze/loop-sweep/compare-runs`
as subprocesses, one (variant, seed, phase) step at a time, and writes the report.

Resumability: every step writes a done-marker (`OUT/variants/V/seedS/phases/PHASE.json`, or
`OUT/phases/...` for study-wide steps) only after its command succeeded and its outputs are in
place, so running the study again skips what is done and redoes only what is not. An
interrupted `train` step resumes from the run's newest checkpoint (that is what `train` does
in a used run directory); every other step is redone from its start.

The commands are the CLIs' stable command lines, not their Python internals: the study sits
just below `grow_megatron.cli` and never imports it, and each step can be re-run by hand from
the command its marker and log record.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from grow_megatron.config.base import ConfigError
from grow_megatron.config.data import split_vector
from grow_megatron.config.run import RunConfig
from grow_megatron.config.rundir import RunDir

# Fault injection (the study.step point): a test stops the study as a kill at the end of a step
# would, without timing a real kill.
from grow_megatron.engine.faults import ENV as FAULT_ENV
from grow_megatron.engine.faults import fault_armed
from grow_megatron.study.config import StudyConfig, VariantConfig
from grow_megatron.study.layout import Step, StudyLayout, label, plan, read_json, write_json

LOG_TAIL = 20
BLOCK_ANALYSES = ("sublayer", "block-similarity")
"""Analyses with a block_size option: the study gives them the grown variants' block size."""


_RENDEZVOUS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
)


class StudyError(RuntimeError):
    """A step failed (its command exited non-zero) or cannot run; the message is one line plus
    the tail of the step's log."""


class StudyInterrupted(StudyError):
    """The study stopped before finishing (Ctrl-C, or the study.step fault point)."""


def embedded_heldout(rc: RunConfig, path: str) -> str:
    """The embedded corpus' validation documents (data.split's second part, in megatron's
    document ranges: [round(p0 N), round((p0 + p1) N))), written as .jsonl: text no variant
    trained on. Rewritten only when it differs."""
    from grow_megatron.data.corpus import iter_default_corpus

    docs = [d["text"] for d in iter_default_corpus()]
    p = split_vector(rc.data.split)
    lo, hi = int(round(p[0] * len(docs))), int(round((p[0] + p[1]) * len(docs)))
    if hi <= lo:
        raise ConfigError(
            "data.split",
            rc.data.split,
            "leaves the embedded corpus no validation documents for the held-out NLL: give the study a heldout file",
        )
    text = "".join(json.dumps({"text": t}) + "\n" for t in docs[lo:hi])
    old = open(path).read() if os.path.isfile(path) else None
    if old != text:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return path


class Eta:
    """Remaining time from the steps done so far: each remaining step is estimated by the mean
    duration of the finished steps of its phase, else of all finished steps."""

    def __init__(self) -> None:
        self.done: dict[str, list[float]] = {}

    def add(self, step: Step, seconds: float) -> None:
        self.done.setdefault(step.phase, []).append(seconds)

    def remaining(self, steps: list[Step]) -> float | None:
        every = [s for v in self.done.values() for s in v]
        if not every:
            return None
        mean = sum(every) / len(every)
        return sum(sum(self.done[s.phase]) / len(self.done[s.phase]) if s.phase in self.done else mean for s in steps)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class StudyRun:
    """What one invocation of the study did."""

    ran: list[Step] = field(default_factory=list)
    """Steps whose command ran (and succeeded) in this invocation."""
    skipped: list[Step] = field(default_factory=list)
    """Steps found done (marker present) and not re-run."""
    report: str | None = None
    """Path of report.md, when the report phase ran."""


class Runner:
    """Runs the steps of one study (see module docstring)."""

    def __init__(
        self,
        cfg: StudyConfig,
        base_path: str,
        verbose: bool = False,
        out: TextIO = sys.stdout,
        command: str | None = None,
    ):
        self.cfg, self.base_path, self.verbose, self.out = cfg, base_path, verbose, out
        self.command_line = command
        self.layout = StudyLayout(cfg.out_dir)
        self.variants: dict[str, VariantConfig] = {v.name: v for v in cfg.variants}
        self.configs: dict[str, RunConfig] = {
            v.name: cfg.run_config(base_path, v, cfg.seeds[0], self.layout.run_dir(v.name, cfg.seeds[0]))
            for v in cfg.variants
        }
        self.heldout = cfg.heldout
        self.python = [sys.executable, "-m", "grow_megatron"]

    # --- helpers -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[study] {text}", file=self.out, flush=True)

    def block_size(self) -> int | None:
        """The grown variants' block size (marks block starts in every model's line plots)."""
        for rc in self.configs.values():
            if rc.growth.enabled:
                return rc.growth.block_size
        return None

    def grown(self) -> list[str]:
        return [n for n, rc in self.configs.items() if rc.growth.enabled]

    def _need(self, path: str, step: Step, what: str) -> None:
        if not os.path.exists(path):
            raise StudyError(
                f"{step.title()}: {what} is missing ({path}); include its phase in `phases` "
                "(or run the study once with it)"
            )

    # --- commands ------------------------------------------------------------------------
    def command(self, step: Step) -> list[str]:
        cfg, L, v, s = self.cfg, self.layout, step.variant, step.seed
        ev = cfg.eval
        held = ["--heldout", self.heldout]
        nll = (
            held
            + ([f"--seq-length={ev.seq_length}"] if ev.seq_length else [])
            + ([f"--max-chunks={ev.max_chunks}"] if ev.max_chunks else [])
        )
        if step.phase == "train":
            launch = [*cfg.launcher_words(), "-m", "grow_megatron.cli"] if cfg.launcher.strip() else self.python
            sets = [a for o in cfg.variant_overrides(self.variants[v], s, L.run_dir(v, s)) for a in ("--set", o)]
            return [*launch, "train", self.variants[v].config or self.base_path, *sets]
        if step.phase == "convert":
            self._need(RunDir(L.run_dir(v, s)).checkpoints, step, "the trained run")
            return [*self.python, "convert", "to-hf", L.run_dir(v, s), L.hf_dir(v, s), "--force", "--no-progress"]
        if step.phase == "eval":
            self._need(os.path.join(L.hf_dir(v, s), "config.json"), step, "the HF export")
            return [
                *self.python,
                "eval",
                L.hf_dir(v, s),
                "--tasks",
                ev.tasks,
                f"--n={ev.n}",
                f"--seed={ev.seed}",
                *nll,
                f"--batch-size={ev.batch_size}",
                "--device",
                cfg.device,
                "--json",
                L.eval_json(v, s),
            ]
        if step.phase == "analyze":
            self._need(os.path.join(L.hf_dir(v, s), "config.json"), step, "the HF export")
            an = cfg.analysis
            argv = [
                *self.python,
                "analyze",
                "compare",
                L.hf_dir(v, s),
                "--labels",
                label(cfg, v, s),
                "--out",
                L.analysis_dir(v, s),
                "--data",
                self.heldout,
                "--tasks",
                an.tasks,
                f"--n={an.n}",
                f"--seed={ev.seed}",
                "--device",
                cfg.device,
                "--quiet",
                "--analyses",
                *an.analyses,
            ]
            if self.block_size():
                argv.append(f"--mark-blocks={self.block_size()}")
            if an.quick:
                argv.append("--quick")
            for name in BLOCK_ANALYSES:  # the grown variants' blocks, unless set explicitly
                if (
                    name in an.analyses
                    and self.block_size()
                    and not any(o.startswith(f"{name}.block_size=") for o in an.set)
                ):
                    argv += ["--set", f"{name}.block_size={self.block_size()}"]
            return argv + [a for o in an.set for a in ("--set", o)]
        if step.phase == "loop":
            lp, v = cfg.loop, self.loop_variant(step)
            self._need(os.path.join(L.hf_dir(v, s), "config.json"), step, f"the HF export of {v}")
            argv = [
                *self.python,
                "loop-sweep",
                L.hf_dir(v, s),
                "--out",
                L.loop_dir(s),
                "--tasks",
                ev.tasks,
                f"--n={lp.n or ev.n}",
                f"--seed={ev.seed}",
                *nll,
                f"--batch-size={ev.batch_size}",
                "--repeats",
                ",".join(map(str, lp.repeats)),
                "--device",
                cfg.device,
                "--quiet",
            ]
            return argv + (["--blocks", lp.blocks] if lp.blocks else [])
        if step.phase == "compare-runs":
            # compare-runs names a run by its directory's name, and every run directory here is
            # called `run`: it gets links named by the models' labels instead.
            links = os.path.join(cfg.out_dir, "compare_runs", "runs")
            os.makedirs(links, exist_ok=True)
            runs = []
            for s in cfg.seeds:
                for var in cfg.variants:
                    self._need(RunDir(L.run_dir(var.name, s)).metrics, step, "a trained run")
                    link = os.path.join(links, label(cfg, var.name, s))
                    if os.path.islink(link):
                        os.remove(link)
                    os.symlink(L.run_dir(var.name, s), link)
                    runs.append(link)
            return [*self.python, "compare-runs", *runs, "--out", os.path.join(cfg.out_dir, "compare_runs")]
        raise ValueError(f"no command for phase {step.phase!r}")

    def loop_variant(self, step: Step) -> str:
        """The variant the loop phase loops: loop.of, or the best grown variant by the eval phase
        (mean primitive accuracy over seeds; ties: lower held-out NLL)."""
        if self.cfg.loop.of != "best":
            return self.cfg.loop.of
        grown = self.grown()
        if not grown:
            raise StudyError("loop: loop.of = best, but no variant grows (set loop.of to a variant's name)")

        def score(v: str) -> tuple[float, float]:
            accs, nlls = [], []
            for s in self.cfg.seeds:
                path = self.layout.eval_json(v, s)
                self._need(path, step, f"the eval results of {v} seed {s}")
                ev = read_json(path)
                accs.append(
                    ev["primitives_mean"]["accuracy"]
                    if "primitives_mean" in ev
                    else next(iter(ev["primitives"].values()))["accuracy"]
                )
                nlls.append(ev["heldout"][self.heldout]["nll"])
            return sum(accs) / len(accs), -sum(nlls) / len(nlls)

        return max(grown, key=score)

    # --- running -------------------------------------------------------------------------
    def _execute(self, step: Step, argv: list[str]) -> tuple[float, float]:
        """Run one command with its output in the step's log (and on stdout when verbose).
        Returns (wall seconds, CPU seconds of the command and its children): on a machine
        shared with other jobs the wall time is inflated, the CPU time is not."""
        log = self.layout.log(step)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        # Each command is a job of its own: a rendezvous inherited from this process (a study
        # started inside a torchrun or Slurm step, or after an in-process run) would make a
        # single-process command bind the same port, and torchrun sets its own.
        env = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS}
        env["PYTHONUNBUFFERED"] = "1"
        t0, cpu0 = time.monotonic(), _children_cpu()
        with open(log, "w") as f:
            f.write("$ " + shlex.join(argv) + "\n")
            f.flush()
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace"
            )
            try:
                for line in proc.stdout:
                    f.write(line)
                    if self.verbose:
                        self.out.write(line)
                rc = proc.wait()
            except KeyboardInterrupt:
                # The child got the same SIGINT (one process group): `train` checkpoints and
                # exits; wait for it so that the run directory is left resumable.
                proc.wait()
                raise StudyInterrupted(
                    f"interrupted during {step.title()}; run the same command again to resume (log: {log})"
                ) from None
        if rc != 0:
            with open(log) as f:
                tail = f.readlines()[-LOG_TAIL:]
            raise StudyError(f"{step.title()} failed (exit code {rc}); log: {log}\n" + "".join(tail).rstrip())
        return time.monotonic() - t0, _children_cpu() - cpu0

    def _after(self, step: Step, seconds: float) -> dict:
        """Phase outputs beyond the command's own, and the marker's extra fields."""
        if step.phase == "train":
            write_json(
                self.layout.train_json(step.variant, step.seed),
                train_summary(self.layout.run_dir(step.variant, step.seed), seconds),
            )
        if step.phase == "loop":
            return {"looped_variant": self.loop_variant(step)}
        return {}

    def run(self) -> StudyRun:
        cfg, result = self.cfg, StudyRun()
        if self.heldout is None:
            self.heldout = embedded_heldout(next(iter(self.configs.values())), self.layout.heldout())
        steps, eta, t_start = plan(cfg), Eta(), time.monotonic()
        for k, step in enumerate(steps):
            marker = self.layout.marker(step)
            if os.path.isfile(marker):
                eta.add(step, read_json(marker)["seconds"])
                result.skipped.append(step)
                continue
            argv = self.command(step)
            left = eta.remaining(steps[k:])
            self.say(
                f"{k + 1}/{len(steps)} {step.title()} (elapsed {fmt_seconds(time.monotonic() - t_start)}, "
                f"ETA {fmt_seconds(left)})"
            )
            seconds, cpu = self._execute(step, argv)
            if fault_armed("study.step", step):
                raise StudyInterrupted(
                    f"stopped after {step.title()} by {FAULT_ENV}={os.environ[FAULT_ENV]} (before its marker)"
                )
            extra = self._after(step, seconds)
            write_json(
                marker,
                {
                    "phase": step.phase,
                    "variant": step.variant,
                    "seed": step.seed,
                    "seconds": seconds,
                    "cpu_seconds": cpu,
                    "command": shlex.join(argv),
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    **extra,
                },
            )
            eta.add(step, seconds)
            result.ran.append(step)
            self.say(f"{step.title()} done in {fmt_seconds(seconds)}")
        if result.skipped:
            self.say(f"{len(result.skipped)} of {len(steps)} steps were already done (markers under {cfg.out_dir})")
        if "report" in cfg.phases:
            from grow_megatron.study.report import write_report

            result.report = write_report(cfg, self.layout, self)
            self.say(f"report: {result.report}")
        return result


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes of this process (and theirs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def train_summary(run_dir: str, seconds: float) -> dict:
    """A finished run's totals from its metrics.jsonl: the last record per step wins (a step re-run
    after a resume is logged again), training FLOPs and tokens are cumulative (docs/method.md §6)."""
    by_step: dict[int, dict] = {}
    val = None
    path = RunDir(run_dir).metrics
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if "step" in r and "loss" in r:
                    by_step[r["step"]] = r
                    if r.get("val_loss") is not None:
                        val = (r["step"], r["val_loss"])
    if not by_step:
        raise StudyError(f"{path} has no training records")
    last = by_step[max(by_step)]
    return {
        "run_dir": run_dir,
        "steps": max(by_step) + 1,
        "final_depth": last["depth"],
        "tokens": last["tokens"],
        "flops": last["flops"],
        "final_loss": last["loss"],
        "final_val_loss": None if val is None else val[1],
        "final_val_step": None if val is None else val[0] + 1,
        "train_step_seconds": sum(r.get("step_s") or 0.0 for r in by_step.values()),
        "phase_seconds": seconds,
    }


def run_study(
    cfg: StudyConfig, base_path: str, verbose: bool = False, out: TextIO = sys.stdout, command: str | None = None
) -> StudyRun:
    """Run (or resume) a study; see Runner. `command`: the command line, for the report."""
    return Runner(cfg, base_path, verbose, out, command).run()
