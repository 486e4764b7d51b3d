#!/bin/bash
# `grow-megatron eval` end to end, an older commit against the working tree, same interpreter and
# libraries, one thread each; prints CPU seconds (user+sys), wall seconds and peak memory per side.
#
#   tools/bench_eval_cli.sh MODEL_DIR [N=40] [OLD_COMMIT=0ae41da]
#
# The old commit is exported with `git archive` to a temporary directory and put first on
# PYTHONPATH; the JSON results go to /tmp/bench_eval_cli_{old,new}.json (compare the accuracies).
set -eu
MODEL=$(realpath "$1"); N=${2:-40}; OLD=${3:-0ae41da}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/old" "$TMP/cwd"
git -C "$ROOT" archive "$OLD" | tar -x -C "$TMP/old"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
RUN='import sys; from grow_megatron.cli import main; sys.exit(main())'
for side in old new; do
  if [ $side = old ]; then PP=$TMP/old; else PP=$ROOT; fi
  # From an empty directory: `python -c` puts the current one first on sys.path.
  (cd "$TMP/cwd" && PYTHONPATH=$PP /usr/bin/time -f "$side cpu_s=%U+%S wall_s=%e maxrss_kb=%M" "$PY" -c "$RUN" eval "$MODEL" \
     --tasks paper --n "$N" --seed 0 --json /tmp/bench_eval_cli_$side.json > "$TMP/$side.out" 2>&1) || { cat "$TMP/$side.out"; exit 1; }
  tail -n 1 "$TMP/$side.out"
done
