#!/usr/bin/env bash
# The main job end to end on the embedded default: local Ray, generated data, the GPU when there
# is one (`demo` preset, 360 s of training). Extra arguments go to gaga-demo (--train-seconds, --out, --set).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
setup_start=$SECONDS
bash "$root/scripts/setup.sh"
echo "demo.sh: set-up (virtualenv and install) took $((SECONDS - setup_start)) s"
cd "$root"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=${WANDB_MODE:-offline} RAY_USAGE_STATS_ENABLED=0
demo_start=$SECONDS
status=0
.venv/bin/gaga-demo "$@" || status=$?
echo "demo.sh: gaga-demo took $((SECONDS - demo_start)) s (set-up not included); load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
