"""model.compile: each layer compiled, the same numbers as eager within fp32 tolerance, a growth
that compiles nothing new (the grown layers reuse the first layer's graphs), and the same
checkpoint state as an eager engine."""

import pytest
import torch

from engine_helpers import narrow_model, random_batch
from grow_megatron.config.training import OptimConfig
from grow_megatron.engine.build import build_engine, run_microbatches, train_step
from grow_megatron.engine.grow import grow
from grow_megatron.engine.resolve import engine_spec
from grow_megatron.growth.operators import lidas
from grow_megatron.model.builder import compiled_graphs

V, S = 96, 16
MODEL = narrow_model(6, V, S, ln_scaling=True)


@pytest.fixture
def env(engine_env):
    yield
    torch._dynamo.reset()  # the next test's graphs are its own


def _engine(compiled, depth=2):
    spec = engine_spec(MODEL, V, optim=OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=0), compile=compiled)
    torch.manual_seed(0)
    return build_engine(spec, depth)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_compiled_layers_match_eager_and_growth_compiles_nothing_new(env):
    eager, comp = _engine(False), _engine(True)
    assert all(layer._compiled_call_impl is not None for layer in comp.local_layers())
    assert not any(getattr(layer, "_compiled_call_impl", None) for layer in eager.local_layers())
    # the output layer + loss: one compiled function against megatron's eager vocab-parallel path
    assert comp.chunks[0].compiled_loss is not None and eager.chunks[0].compiled_loss is None
    assert eager.chunks[0].state_dict().keys() == comp.chunks[0].state_dict().keys()
    torch._dynamo.reset()
    graphs0 = compiled_graphs()
    # gradients of one backward: fp32 with the compiled kernels' reduction order (a real
    # difference in the layer shows at >= 1e-3); after an AdamW step the parameters are no
    # measure, AdamW's first update is about lr x sign(g) even where g is rounding noise
    batch = [random_batch(99, V, S)]
    la, lb = run_microbatches(eager, batch, False), run_microbatches(comp, batch, False)
    assert abs(float(la) - float(lb)) <= 1e-5 * float(la)
    ge = {k: p.main_grad.clone() for k, p in eager.named_parameters()}
    gc = {k: p.main_grad.clone() for k, p in comp.named_parameters()}
    assert max(_rel(gc[k], ge[k]) for k in ge) < 1e-4
    for step in range(2):
        batch = [random_batch(step, V, S)]
        a, b = train_step(eager, batch, 1e-2), train_step(comp, batch, 1e-2)
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"]
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"]
    after_start = compiled_graphs()
    assert after_start > graphs0  # it did compile
    # two growths (2 -> 4 -> 6 layers, LN-Scaling: each new position its own 1/sqrt(l)):
    # the new layers run on the graphs already compiled
    for g in (lidas(2, 2), lidas(4, 2)):
        eager, comp = grow(eager, g), grow(comp, g)
        batch = [random_batch(10 + g.old_depth, V, S)]
        a, b = train_step(eager, batch, 1e-2), train_step(comp, batch, 1e-2)
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * a["loss"]
        assert compiled_graphs() - after_start <= 1
        after_start = compiled_graphs()
    assert comp.depth == 6 and all(layer._compiled_call_impl is not None for layer in comp.local_layers())


def _torchrun_resume(run_dir, tp: int, sets: dict) -> str:
    """`grow-megatron train` of the micro run in `run_dir` under torchrun at TP = `tp`."""
    import os
    import subprocess
    import sys

    from engine_helpers import micro_overrides
    from grow_megatron.engine.faults import ENV

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Not this process's world: the engine tests before this one set its rank and store port.
    world = (ENV, "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in world}
    env["OMP_NUM_THREADS"] = "1"
    args = [a for kv in micro_overrides(run_dir, **sets, **{"parallel.tensor_parallel": tp}) for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(tp)]
    cmd += ["-m", "grow_megatron.cli", "train", "examples/tiny_lidas.yaml", *args]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_compiled_run_grows_resumes_exactly_and_at_another_layout(tmp_path, capsys):
    """The whole trainer under model.compile, a 4 -> 8 -> 12 LIDAS run of 6 steps:
    - stopped after 3 steps (between its growths) and resumed, it equals the uninterrupted
      compiled run bit for bit (the compiled kernels are deterministic on CPU, and the resumed
      engine compiles the same graphs);
    - stopped there and resumed under torchrun at TP=2, it follows the uninterrupted run at fp32
      rounding (TP changes only the summation order; test_distributed.py's tolerance);
    - each growth compiles at most one new graph, and the log says what was compiled."""
    from engine_helpers import micro_config
    from grow_megatron.config.rundir import RunDir
    from grow_megatron.training.loop import train

    sets = {"model.compile": True, "train.steps": 6, "growth.grow_steps": 4, "optim.decay_steps": 2}
    whole = train(micro_config(tmp_path / "whole", **sets))
    log = capsys.readouterr().out
    cfg = micro_config(tmp_path / "parts", **sets)
    first, rest = train(cfg, stop_at=3), train(cfg)
    assert [g.step for g in whole.growths] == [g.step for g in rest.growths] and len(whole.growths) == 2
    assert rest.start_step == 3 and {**first.losses, **rest.losses} == whole.losses
    records = [r for r in RunDir(str(tmp_path / "whole")).read_metrics() if "compiled_graphs" in r]
    graphs = {r["step"]: r["compiled_graphs"] for r in records}
    for g in whole.growths:  # the step a growth happens on, against the step before it
        assert graphs[g.step] - graphs[g.step - 1] <= 1, (g.step, graphs)
    assert graphs[0] > 0 and f"graph(s) compiled at step 0 (depth 4, {graphs[0]} in this process)" in log, log

    train(micro_config(tmp_path / "tp2", **sets), stop_at=3)
    assert "resuming from" in _torchrun_resume(tmp_path / "tp2", 2, sets)
    tp2 = {r["step"]: r["loss"] for r in RunDir(str(tmp_path / "tp2")).read_metrics() if "loss" in r}
    assert tp2.keys() == whole.losses.keys() == set(range(6))
    for step in range(3):  # before the stop: one process, the same bits
        assert tp2[step] == whole.losses[step]
    for step in range(3, 6):
        assert tp2[step] == pytest.approx(whole.losses[step], rel=1e-5), step
