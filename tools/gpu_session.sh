#!/usr/bin/env bash
# One GPU session's measurements in one device-tool call (NOT RUN YET: written without a GPU).
#
# Before (here, once):   bash tools/gpu_wheels.sh          # megatron-core + liger-kernel -> .whl/
# Device tool call:      run(command="bash tools/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Only some steps:       GS_STEPS="train_short growth" bash tools/gpu_session.sh
# Then (here):           python tools/gpu_results.py <files_at>    # markdown tables for docs/benchmarks.md
# Plumbing check on CPU: GS_SKIP_SETUP=1 GS_SMOKE=1 OUT=/tmp/gs_out bash tools/gpu_session.sh
#   (every step with CPU-sized work: bench --dry-run, kernels --dry-run, a tiny train_short and
#   growth; the same collection; about 3 minutes on 2 cores)
#
# Steps, most important first (each skipped when the time left is under its minimum):
#   bench_360m   grow-megatron bench, SmolLM-360M shapes (examples/smollm360m_lidas.yaml), batch 8x2048,
#                static + HF Llama eager/compile + scaled grown-vs-static + per stage, with a
#                torch.profiler breakdown of the static and HF steps (--profile)
#   bench_1p7b   the same at SmolLM-1.7B shapes, batch 4x2048 (no per-stage part: the scaled run has it)
#   kernels      tools/bench_kernels.py: our Triton kernels vs eager, torch.compile, Liger-Kernel
#   train_short  examples/smollm360m_lidas_short.yaml through the real training loop: tokens/s
#                around each growth, peak memory per stage (grow_megatron.cli.train_record)
#   growth       grow-megatron bench-growth: grow() latency and memory at 360M/1.7B shapes
#
# What comes back ($OUT holds at most 8 files): session.log, one JSON per step
# (bench_360m.json, bench_1p7b.json, kernels.json, train_short.json, growth.json) and
# results.tar.gz with everything else (report.md, throughput.png, metrics, logs).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
# Seconds for all steps. The device kills the command at 600 s without running the EXIT trap,
# and a step stopped at its limit gets KILL_AFTER more seconds to write its record.
BUDGET=${GS_BUDGET:-545}
KILL_AFTER=25
STEPS=${GS_STEPS:-"bench_360m bench_1p7b kernels train_short growth"}
OUT=${OUT:-/tmp/gpu_session_out}  # the device tool sets OUT; elsewhere results stay in /tmp
W=/tmp/gs                         # full outputs; only a few files fit back through $OUT
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1 GROW_MEGATRON_CACHE=$W/cache TOKENIZERS_PARALLELISM=false

SMOKE=${GS_SMOKE:-}
left() { echo $((BUDGET - (SECONDS - T0))); }

collect() {
  # Runs on any exit (a step's crash, the budget): whatever exists comes back.
  for f in bench_360m:$W/bench_360m/report.json bench_1p7b:$W/bench_1p7b/report.json \
           kernels:$W/kernels.json train_short:$W/train_short.json growth:$W/growth.json; do
    [ -f "${f#*:}" ] && cp "${f#*:}" "$OUT/${f%%:*}.json"
  done
  tar czf "$OUT/results.tar.gz" -C "$W" --exclude=cache --exclude=checkpoints . 2>/dev/null
  echo "=== collected after $((SECONDS - T0)) s: $(ls "$OUT" | tr '\n' ' ')"
  [ -z "${LINKED:-}" ] || rm -f grow_megatron/kernels
}
trap collect EXIT

# step NAME LIMIT MIN CMD...: run CMD under min(LIMIT, time left), or skip it.
# At the limit the command gets SIGINT, not SIGTERM: Python turns it into KeyboardInterrupt,
# so `finally` blocks write what was measured (the bench's report, train_record's JSON; the
# training loop stops after the current step). KILL follows KILL_AFTER seconds later.
# A step's outputs from an earlier call on the same (warm) machine are removed first, so that
# nothing stale is collected as if it were this call's.
step() {
  local name=$1 limit=$2 min=$3; shift 3
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local l; l=$(left)
  if (( l < min )); then echo "=== SKIP $name: ${l}s left, needs ${min}s"; return 0; fi
  (( limit > l )) && limit=$l
  rm -rf "${W:?}/$name" "$W/$name.json"
  echo "=== $name: limit ${limit}s ($(date -u +%H:%M:%S)): $*"
  local t=$SECONDS rc
  timeout -s INT -k "$KILL_AFTER" "$limit" "$@"
  rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t))s$( ((rc == 124)) && echo ' (stopped at its time limit)')"
}

# --- setup: carried wheels, then this checkout importable as grow_megatron -----------------
# (GS_SKIP_SETUP=1: use the current environment as is, e.g. to check this script's plumbing.)
if [ -z "${GS_SKIP_SETUP:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# `pip install -e . --no-deps` without a registry; setup.py maps kernels/ to grow_megatron.kernels,
# which a bare PYTHONPATH cannot, hence the link as the fallback.
[ -n "${GS_SKIP_SETUP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  >/dev/null 2>&1 || echo "editable install failed; using PYTHONPATH"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! python3 -c "import grow_megatron.kernels" 2>/dev/null; then
  # Removed on exit: an untracked link left in a developer's checkout would travel with the next call.
  [ -e grow_megatron/kernels ] || { ln -s ../kernels grow_megatron/kernels && LINKED=1; }
fi
[ -n "$SMOKE" ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
python3 - <<'PY' || { echo "imports failed: nothing to measure"; exit 1; }
import importlib.metadata as md, torch
import megatron.core, grow_megatron.kernels, grow_megatron.cli.bench  # noqa: F401
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for m in ("triton", "transformers", "megatron-core", "liger-kernel"):
    try:
        print(m, md.version(m))
    except md.PackageNotFoundError:
        print(m, "not installed")
PY
echo "=== setup done in $((SECONDS - T0))s"

GM="python3 -m grow_megatron.cli"
# GS_SMOKE=1: the same steps and files with CPU-sized work, to check this script and the code
# it calls without a GPU. Unset, the extra arguments are empty and the real commands run.
if [ -n "$SMOKE" ]; then
  echo "=== SMOKE MODE: CPU-sized work, the numbers mean nothing"
  BENCH_X=(--dry-run)
  KERNELS_X=(--dry-run)
  # The real config, shrunk: 3 stages of a tiny width, 12 steps, 2 micro-batches, an eval.
  TRAIN_X=(--set model.num_layers=12 --set model.hidden_size=64 --set model.ffn_hidden_size=160
           --set model.num_attention_heads=4 --set model.num_query_groups=2 --set model.seq_length=64
           --set train.steps=12 --set growth.grow_steps=8 --set train.global_batch_size=4
           --set train.micro_batch_size=2 --set train.eval_interval=6 --set optim.warmup_steps=2
           --set optim.decay_steps=2)
  GROWTH_ARGS=(--preset tiny --depth 4 --depth 8 --seq 64 --mbs 1)
else
  BENCH_X=() KERNELS_X=() TRAIN_X=()
  GROWTH_ARGS=(--preset smollm-360m --preset smollm-1.7b --depth 4 --depth 16 --seq 2048 --mbs 1 --staging off,on)
fi
# Reference batches of notes/h100-anchors.md: 8x2048 (360M), 4x2048 (1.7B) = the configs' micro-batches.
# (${A[@]+"${A[@]}"}: an empty array under `set -u` on any bash.)
step bench_360m 230 90 $GM bench examples/smollm360m_lidas.yaml --out $W/bench_360m \
  --warmup 3 --steps-per-stage 6 --total-steps 100 --profile ${BENCH_X[@]+"${BENCH_X[@]}"}
step bench_1p7b 200 90 $GM bench examples/smollm1.7b_lidas.yaml --out $W/bench_1p7b \
  --warmup 3 --steps-per-stage 6 --total-steps 60 --parts static,schedule,hf --profile ${BENCH_X[@]+"${BENCH_X[@]}"}
step kernels 90 45 python3 tools/bench_kernels.py --out $W/kernels.json ${KERNELS_X[@]+"${KERNELS_X[@]}"}
step train_short 150 90 python3 -m grow_megatron.cli.train_record examples/smollm360m_lidas_short.yaml \
  --out $W/train_short.json --set run_dir=$W/train_short --set checkpoint.save_at_growth=false \
  --set logging.progress=false --set logging.tensorboard=false ${TRAIN_X[@]+"${TRAIN_X[@]}"}
step growth 90 40 $GM bench-growth "${GROWTH_ARGS[@]}" --out $W/growth.json
echo "=== all steps done in $((SECONDS - T0))s"
