#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install what ldm needs.
# Sourced by scripts/demo.sh and scripts/test.sh. Override the interpreter with PYTHON=...,
# the environment location with LDM_VENV=..., and the torch wheels with LDM_TORCH_SPEC=...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LDM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# torch 2.14.1 / torchvision 0.29.1: the pair lpips and the evaluation metrics are tested with.
TORCH_SPEC="${LDM_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# Reinstall only when the dependency declarations changed since the last successful install.
stamp="$VENV/.ldm-installed"
want="$(cat "$ROOT/setup.py" "$ROOT/scripts/env.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing dependencies into $VENV (first run takes a few minutes)"
    python -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    python -m pip install --quiet $TORCH_SPEC
    python -m pip install --quiet -e "$ROOT[test,wandb]"
    echo "$want" > "$stamp"
fi
cd "$ROOT"
