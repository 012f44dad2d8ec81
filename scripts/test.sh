#!/usr/bin/env bash
# The test suite on CPU (GPU tests are skipped without CUDA). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline RAY_USAGE_STATS_ENABLED=0
# Ray Train's controller polls its workers every 2 s: a run ends up to 2 s after its last step,
# ~1.5 s per training run on average, and the suite starts ~25 of them
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=${RAY_TRAIN_HEALTH_CHECK_INTERVAL_S:-0.25}
exec .venv/bin/python -m pytest "$@"
