"""Write the LSUN file lists ``ldm.data.lsun`` reads from a folder of exported images.

    python scripts/prepare_lsun.py --category church_outdoor     # data/lsun/churches -> lists
    python scripts/prepare_lsun.py --data-root DIR --train-list A.txt --val-list B.txt --val-count 1000

Export the LMDB first with https://github.com/fyu/lsun (``python data.py export``). The
validation list is a seeded random sample of ``--val-count`` images; the rest is training.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.data.paths import data_root, list_images, write_list  # noqa: E402

CATEGORIES = {"church_outdoor": "churches", "bedrooms": "bedrooms"}


def split(files: list[str], val_count: int, seed: int) -> tuple[list[str], list[str]]:
    if not 0 <= val_count < len(files):
        raise SystemExit(f"--val-count {val_count} must be below the number of images ({len(files)})")
    val = set(np.random.default_rng(seed).choice(len(files), size=val_count, replace=False).tolist())
    return [f for i, f in enumerate(files) if i not in val], [f for i, f in enumerate(files) if i in val]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--category", choices=sorted(CATEGORIES), help="sets the default paths below")
    p.add_argument("--data-root", help="folder of exported images (default data/lsun/<churches|bedrooms>)")
    p.add_argument("--train-list", help="default data/lsun/<category>_train.txt")
    p.add_argument("--val-list", help="default data/lsun/<category>_val.txt")
    p.add_argument("--val-count", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lsun = data_root("lsun")
    if args.category is None and not (args.data_root and args.train_list and args.val_list):
        raise SystemExit("give --category, or --data-root, --train-list and --val-list")
    data = args.data_root or os.path.join(lsun, CATEGORIES[args.category])
    train_list = args.train_list or os.path.join(lsun, f"{args.category}_train.txt")
    val_list = args.val_list or os.path.join(lsun, f"{args.category}_val.txt")
    if not os.path.isdir(data):
        raise SystemExit(f"{data} not found: export the LSUN LMDB there first")
    train, val = split(list_images(data), args.val_count, args.seed)
    write_list(train_list, train)
    write_list(val_list, val)
    print(f"{train_list}: {len(train)} images, {val_list}: {len(val)} images")


if __name__ == "__main__":
    main()
