#!/usr/bin/env bash
# Create (or reuse) ./.venv and install the project for CPU work. Idempotent: a stamp keyed on
# pyproject.toml and this file skips the install when nothing changed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  # Pin the CPU build first: an unpinned torch would pull several GB of CUDA packages.
  # Off this machine, point pip at the CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
  "${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}"
  "${pip[@]}" -e ".[dev,faces]"
  # lpips only for its learned linear weights (the package itself imports torchvision).
  "${pip[@]}" --no-deps "lpips>=0.1.4"
  # MediaPipe FaceMesh for preprocessing: its protobuf<5 pin clashes with wandb; it runs with the
  # protobuf 6 the faces extra installs (docs/install.md)
  "${pip[@]}" --no-deps "mediapipe==0.10.14"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
