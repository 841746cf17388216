#!/usr/bin/env bash
# Download the released latent diffusion models into models/ldm/<name>/model.ckpt, beside the
# config.yaml of each.
#
#   bash scripts/download_models.sh                    # all of them
#   bash scripts/download_models.sh cin256 bsr_sr      # a selection
#
# Run from the repository root. Needs curl (or wget) and unzip. Exits non-zero, naming the URL,
# when a download fails (for instance without internet access). LDM_MODELS_URL replaces the
# download location (a mirror).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_download.sh"

NAMES=(celeba256 ffhq256 lsun_churches256 lsun_beds256 text2img256 cin256 semantic_synthesis512
       semantic_synthesis256 bsr_sr layout2img-openimages256 inpainting_big)
# directory under models/ldm/ -> archive name on the server (as in the original release)
archive() {
    case "$1" in
        celeba256) echo celeba ;;
        ffhq256) echo ffhq ;;
        lsun_churches256) echo lsun_churches ;;
        lsun_beds256) echo lsun_bedrooms ;;
        text2img256) echo text2img ;;
        cin256) echo cin ;;
        semantic_synthesis512) echo semantic_synthesis ;;
        semantic_synthesis256) echo semantic_synthesis256 ;;
        bsr_sr) echo sr_bsr ;;
        layout2img-openimages256) echo layout2img_model ;;
        inpainting_big) echo inpainting_big ;;
        *) return 1 ;;
    esac
}

download_selected model models/ldm "$@"
