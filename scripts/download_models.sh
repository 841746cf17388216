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

BASE_URL="${LDM_MODELS_URL:-https://ommer-lab.com/files/latent-diffusion}"
# directory under models/ldm/ -> archive name on the server (as in the original release)
NAMES=(celeba256 ffhq256 lsun_churches256 lsun_beds256 text2img256 cin256 semantic_synthesis512
       semantic_synthesis256 bsr_sr layout2img-openimages256 inpainting_big)
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

# fetch_and_unzip URL DIR: download URL to DIR/model.zip, unzip it there, remove the zip.
fetch_and_unzip() {
    local url="$1" dir="$2" zip="$2/model.zip" rc=0
    mkdir -p "$dir"
    echo "downloading $url -> $dir/"
    if command -v curl >/dev/null 2>&1; then
        curl --fail --location --silent --show-error --retry 2 --output "$zip" "$url" || rc=$?
    elif command -v wget >/dev/null 2>&1; then
        wget --quiet --output-document "$zip" "$url" || rc=$?
    else
        echo "error: neither curl nor wget is installed" >&2
        exit 1
    fi
    if [ "$rc" != 0 ]; then
        rm -f "$zip"
        echo "error: could not download $url (exit status $rc). Check the internet connection (this" >&2
        echo "       machine may be offline), or fetch the file elsewhere and unzip it into $dir/." >&2
        exit 1
    fi
    if ! command -v unzip >/dev/null 2>&1; then
        echo "error: unzip is not installed; the archive is at $zip" >&2
        exit 1
    fi
    unzip -o -q "$zip" -d "$dir" || { echo "error: $zip is not a valid zip archive" >&2; exit 1; }
    rm -f "$zip"
    if [ ! -f "$dir/model.ckpt" ]; then
        echo "error: $url did not contain model.ckpt (got: $(ls "$dir"))" >&2
        exit 1
    fi
}

if [ "$#" -gt 0 ]; then selected=("$@"); else selected=("${NAMES[@]}"); fi
for name in "${selected[@]}"; do
    if ! zipname="$(archive "$name")"; then
        echo "error: unknown model '$name'; known: ${NAMES[*]}" >&2
        exit 2
    fi
    fetch_and_unzip "$BASE_URL/$zipname.zip" "models/ldm/$name"
done
echo "done: models in models/ldm/"
