"""Write the CelebA-HQ / FFHQ split lists ``ldm.data.faceshq`` reads.

    python scripts/prepare_faces.py --dataset ffhq --root data/ffhq
    python scripts/prepare_faces.py --dataset celebahq --root data/celebahq --convert-npy

Without lists, the last ``--val-count`` images in sorted order (FFHQ 10000, CelebA-HQ 5000)
are the validation split. ``--convert-npy`` turns the (1, H, W, 3) ``.npy`` CelebA-HQ files of
the original release into PNGs and rewrites existing lists to name the PNGs.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.data.paths import list_images, write_list  # noqa: E402

VAL_COUNT = {"ffhq": 10000, "celebahq": 5000}


def convert_npy(root: str) -> int:
    n = 0
    for name in sorted(os.listdir(root)):
        if name.endswith(".npy"):
            arr = np.load(os.path.join(root, name), allow_pickle=False)
            Image.fromarray(arr.reshape(arr.shape[-3:]).astype(np.uint8)).save(os.path.join(root, name[:-4] + ".png"))
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(VAL_COUNT), required=True)
    p.add_argument("--root", help="default data/<dataset>")
    p.add_argument("--val-count", type=int)
    p.add_argument("--convert-npy", action="store_true")
    args = p.parse_args(argv)
    root = args.root or os.path.join("data", args.dataset)
    if not os.path.isdir(root):
        raise SystemExit(f"{root} not found: put the images there first")
    if args.convert_npy:
        print(f"converted {convert_npy(root)} .npy files to PNG")
    lists = [os.path.join(root, f"{args.dataset}{s}.txt") for s in ("train", "validation")]
    if all(os.path.isfile(f) for f in lists):
        for path in lists:  # keep the given split; only file names change
            with open(path, encoding="utf-8") as f:
                entries = [line.strip() for line in f if line.strip()]
            write_list(path, [e[:-4] + ".png" if e.endswith(".npy") else e for e in entries])
        print("kept the existing split lists")
        return
    files = list_images(root)
    n_val = VAL_COUNT[args.dataset] if args.val_count is None else args.val_count
    if not 0 < n_val < len(files):
        raise SystemExit(f"--val-count {n_val} must lie between 0 and the number of images ({len(files)})")
    write_list(lists[0], files[:-n_val])
    write_list(lists[1], files[-n_val:])
    print(f"{lists[0]}: {len(files) - n_val} images, {lists[1]}: {n_val} images")


if __name__ == "__main__":
    main()
