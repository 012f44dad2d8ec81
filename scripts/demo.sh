#!/usr/bin/env bash
# The main job end to end on the embedded default: local Ray, generated data, CPU.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=${WANDB_MODE:-offline} RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/gaga-demo "$@"
