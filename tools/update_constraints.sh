#!/usr/bin/env bash
# Move the tested dependency set forward: a fresh virtual environment resolves README's install
# WITHOUT the old constraints (so it takes today's newest releases), the whole suite runs, and
# only if it passes is constraints.txt rewritten from what was installed.
#
#   bash tools/update_constraints.sh            # then review `git diff constraints.txt` and commit
#
# torch, triton and the nvidia-* wheels are left out of the set: README pins torch for the CPU
# machines, and on a GPU machine the installed torch (and the triton it pins) must win.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_pin="${TORCH_PIN:-torch==2.13.0}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
# shellcheck disable=SC1091
source "$tmp/venv/bin/activate"
python -m pip install -q "$torch_pin" -e ".[test]"
python -m pytest -q tests
{
    echo "# The dependency versions the suite last passed with (tools/update_constraints.sh wrote it on"
    echo "# $(date -u +%Y-%m-%d), Python $(python -c 'import platform; print(platform.python_version())'), $torch_pin). README's install and .ci/run pass it with -c;"
    echo "# setup.py keeps ranges, so a user's own stack can still combine with the package."
    echo "# torch, triton and nvidia-* are left out: README pins torch for CPU machines, and on a GPU machine the"
    echo "# installed torch and the triton it pins must win (triton $(python -m pip show triton 2>/dev/null | sed -n 's/^Version: //p') was the one tested on CPU)."
    python -m pip freeze --exclude-editable | grep -viE '^(torch|triton|nvidia-[a-z0-9_-]+|pip|setuptools|wheel)==' | sort -f
} > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins written"
