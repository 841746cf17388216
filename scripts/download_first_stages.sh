#!/usr/bin/env bash
# Download the released first-stage autoencoders (paper Tab. 8) into
# models/first_stage_models/<name>/model.ckpt, where the configs under configs/ldm/ look for them.
#
#   bash scripts/download_first_stages.sh              # all of them
#   bash scripts/download_first_stages.sh kl-f8 vq-f4  # a selection
#
# Run from the repository root. Needs curl (or wget) and unzip. Exits non-zero, naming the URL,
# when a download fails (for instance without internet access). LDM_MODELS_URL replaces the
# download location (a mirror).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_download.sh"

NAMES=(kl-f4 kl-f8 kl-f16 kl-f32 vq-f4 vq-f4-noattn vq-f8 vq-f8-n256 vq-f16)
# The archives are named like the directories.
archive() {
    case " ${NAMES[*]} " in
        *" $1 "*) echo "$1" ;;
        *) return 1 ;;
    esac
}

download_selected "first stage" models/first_stage_models "$@"
