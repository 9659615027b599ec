#!/usr/bin/env bash
# The Jupyter kernel the notebook test executes notebooks/runner.ipynb with: "parallel-engine",
# this project's Python (PYTHON, default .venv/bin/python) with ipykernel (the test extra).
# Installed into that Python's own prefix (--sys-prefix: nothing outside the virtualenv changes),
# so the kernel runs exactly the code under test, never whichever `python` is first on PATH.
# Idempotent: a kernelspec already pointing at PYTHON means nothing to do.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
NAME=parallel-engine
say() { printf '[ensure-kernel] %s\n' "$*"; }

spec_dir="$("$PYTHON" -c 'import sys; print(sys.prefix)')/share/jupyter/kernels/$NAME"
executable="$("$PYTHON" -c 'import sys; print(sys.executable)')"
if [[ -f $spec_dir/kernel.json ]] && grep -qF "\"$executable\"" "$spec_dir/kernel.json"; then
    say "kernel '$NAME' is installed: $spec_dir"
    exit 0
fi
"$PYTHON" -m ipykernel install --sys-prefix --name "$NAME" --display-name "Python (parallel-engine)" >/dev/null
say "installed kernel '$NAME' ($executable) in $spec_dir"
