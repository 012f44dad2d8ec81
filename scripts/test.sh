#!/usr/bin/env bash
# The test suite on CPU (GPU tests are skipped without CUDA). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest "$@"
