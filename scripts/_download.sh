# Shared part of download_first_stages.sh and download_models.sh; sourced by them, not run.
#
# The sourcing script sets NAMES (every name it knows), defines `archive NAME` (prints the name of
# NAME's archive on the server; fails for an unknown NAME) and calls
# `download_selected KIND DEST_ROOT [NAME...]`: each NAME (all of NAMES when none is given) is
# fetched from $BASE_URL/<archive>.zip and unzipped into DEST_ROOT/NAME/, which must then hold
# model.ckpt. Exits 1 when a download or unzip fails, 2 for an unknown name.

BASE_URL="${LDM_MODELS_URL:-https://ommer-lab.com/files/latent-diffusion}"

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

# download_selected KIND DEST_ROOT [NAME...]: KIND names one item in messages ("model").
download_selected() {
    local kind="$1" root="$2" name zipname
    shift 2
    local selected=("$@")
    if [ "${#selected[@]}" = 0 ]; then selected=("${NAMES[@]}"); fi
    for name in "${selected[@]}"; do
        if ! zipname="$(archive "$name")"; then
            echo "error: unknown $kind '$name'; known: ${NAMES[*]}" >&2
            exit 2
        fi
        fetch_and_unzip "$BASE_URL/$zipname.zip" "$root/$name"
    done
    echo "done: ${kind}s in $root/"
}
