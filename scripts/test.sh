#!/usr/bin/env bash
# The README's test command: installs what the tests need, makes a Docker engine available
# where allowed (root with CI=true|1|yes or PE_START_DOCKER=1; never silently on a laptop), runs pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ -f scripts/ensure-docker.sh ]; then
  bash scripts/ensure-docker.sh
fi
exec python3 -m pytest "$@"
