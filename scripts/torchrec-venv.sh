#!/usr/bin/env bash
# Create a separate virtual environment for the TorchRec comparison
# (`freshrec bench train --against torchrec`): pinned torch + fbgemm-gpu-cpu + torchrec, and
# freshrec itself installed there without its torch pin. It installs and checks the imports;
# it runs nothing else. The core install (.venv) never depends on it.
#
#   bash scripts/torchrec-venv.sh            # creates .venv-torchrec next to pyproject.toml
#   VENV=/path/to/venv PYTHON=python3.11 bash scripts/torchrec-venv.sh
#   .venv-torchrec/bin/python -m freshrec bench train --against torchrec
#
# Pins: fbgemm-gpu-cpu 1.9.0 is built against torch 2.14 (it fails to load on 2.15 with an
# undefined symbol), so this venv holds torch 2.14.1. torchrec 1.9.2 declares the CUDA
# `fbgemm-gpu` as a dependency, so it is installed with --no-deps and its other dependencies
# are listed here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-torchrec}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.14.1}"
FBGEMM="${FBGEMM:-fbgemm-gpu-cpu==1.9.0}"
TORCHREC="${TORCHREC:-torchrec==1.9.2}"

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" "$TORCH"
"${PIP[@]}" --no-deps "$FBGEMM"
"${PIP[@]}" --no-deps "$TORCHREC"
# torchrec's own dependencies, without the CUDA fbgemm-gpu; "$TORCH" keeps pip from moving torch
"${PIP[@]}" "$TORCH" "torchmetrics==1.0.3" "tensordict" "pyre-extensions" "tqdm"
# freshrec without its torch pin: its other core dependencies from pyproject.toml, then itself
mapfile -t DEPS < <("$VENV/bin/python" - "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith("torch")))
PY
)
"${PIP[@]}" "$TORCH" "${DEPS[@]}"
"${PIP[@]}" --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import torch, fbgemm_gpu, torchrec, freshrec; print('torch', torch.__version__, 'torchrec', torchrec.__version__)"
