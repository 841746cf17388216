#!/usr/bin/env bash
# Set up the environment (if needed), then train the demo models on the built-in synthetic data
# and write sample grids. Everything runs offline on CPU; see README.md ("Quick start").
#
#   bash scripts/demo.sh            # first stage, then the latent diffusion demos
#   LDM_DEMO_FAST=1 bash ...        # a much shorter run (smoke test)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python scripts/demo.py "$@"
