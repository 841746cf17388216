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

BASE_URL="${LDM_MODELS_URL:-https://ommer-lab.com/files/latent-diffusion}"
NAMES=(kl-f4 kl-f8 kl-f16 kl-f32 vq-f4 vq-f4-noattn vq-f8 vq-f8-n256 vq-f16)

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
    case " ${NAMES[*]} " in
        *" $name "*) ;;
        *) echo "error: unknown first stage '$name'; known: ${NAMES[*]}" >&2; exit 2 ;;
    esac
    fetch_and_unzip "$BASE_URL/$name.zip" "models/first_stage_models/$name"
done
echo "done: first stages in models/first_stage_models/"
