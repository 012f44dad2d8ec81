#!/usr/bin/env bash
# The package as a user installs it: build a wheel, install it with its dependencies (no extras:
# what a training-only node gets) into a fresh virtualenv, and run the entry points from outside
# the source tree — so nothing can work only because the repository happens to be on sys.path.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work" "$root/build"' EXIT  # build/: setuptools writes it beside the sources
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline RAY_USAGE_STATS_ENABLED=0 GAGA_CACHE_DIR="$work/cache"

"$python" -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install -q --disable-pip-version-check build
"$work/build-env/bin/python" -m build --wheel --outdir "$work/dist" "$root" > "$work/build.log" || { cat "$work/build.log"; exit 1; }

"$python" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}"  # the CPU build first (see scripts/setup.sh)
"${pip[@]}" "$work"/dist/*.whl
bin="$work/venv/bin"
cd "$work"  # outside the repository

"$bin/python" - "$root" <<'PY'
import sys, pipeline, model, jobs, bench
root = sys.argv[1]
for pkg in (pipeline, model, jobs, bench):
    assert not pkg.__file__.startswith(root), f"{pkg.__name__} imported from the source tree: {pkg.__file__}"
for name in ("dlib", "mediapipe", "skimage"):  # extras a training-only node does not need
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} was installed without being asked for")
print("installed package:", pipeline.__file__)
PY
"$bin/gaga-train" --config smoke --help > /dev/null
"$bin/gaga-bench" --list | tail -1
"$bin/gaga-generate" --config smoke --set synthetic.identities=2 --set synthetic.clips_per_identity=1 \
    --set synthetic.frames_per_clip=6 --set synthetic.test_identities=1 --out "$work/data"
"$bin/python" - "$work" <<'PY'
import sys
from pathlib import Path
from pipeline.config import load_config
from preprocessing.synthetic.truth_pairs import truth_pairs, write_pair_shards
work = Path(sys.argv[1])
cfg = load_config("smoke")
write_pair_shards(truth_pairs(work / "data", cfg.camera.image_size, clips=2, pairs_per_clip=2), work / "shards", 4)
PY
"$bin/gaga-train" --config smoke --set data.train_shards="$work/shards" --set train.storage_path="$work/runs" \
    --set train.steps=1 --set train.checkpoint_every=1 --set train.log_every=1 --set train.image_every=0 \
    --set train.val_every=0 --set data.batch_size=2 --set train.run_name=installed > "$work/train.json"
test -f "$work/runs/installed/checkpoint_0000001/model.pt"
# the face metrics need the faces extra, which this install left out: one line that says so
if "$bin/gaga-eval" --config smoke --checkpoint "$work/runs/installed" > /dev/null 2> "$work/eval.err"; then
    echo "gaga-eval ran without the faces extra"; exit 1
fi
grep -q 'gagavatar-ray\[faces\]' "$work/eval.err" || { tail -5 "$work/eval.err"; exit 1; }
echo "install check passed: wheel $(basename "$work"/dist/*.whl), one training step from the installed package"
