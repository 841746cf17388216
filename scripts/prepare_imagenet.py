"""Prepare ILSVRC2012 for ``ldm.data.imagenet``: class folders for val, the synset mapping and
the file lists.

    python scripts/prepare_imagenet.py --root data/imagenet \
        [--val-labels LOC_val_solution.csv] [--synset-mapping LOC_synset_mapping.txt]

``<root>/train/<wnid>/*.JPEG`` must exist. A flat ``<root>/val/*.JPEG`` is sorted into
``val/<wnid>/`` using ``--val-labels`` (Kaggle's LOC_val_solution.csv, or lines
"<file> <wnid>"). Without ``--synset-mapping`` the classes are the sorted train folders and
their human labels are the wnids.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ldm.data.imagenet import read_synset_mapping  # noqa: E402
from ldm.data.paths import list_images, write_list  # noqa: E402


def read_val_labels(path: str) -> dict[str, str]:
    """image stem -> wnid, from LOC_val_solution.csv or '<file> <wnid>' lines."""
    labels = {}
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith(".csv"):
            for row in csv.DictReader(f):
                labels[row["ImageId"]] = row["PredictionString"].split()[0]
        else:
            for line in f:
                if line.strip():
                    name, wnid = line.split()[:2]
                    labels[os.path.splitext(name)[0]] = wnid
    return labels


def sort_val(val_dir: str, labels: dict[str, str]) -> int:
    moved = 0
    for name in sorted(os.listdir(val_dir)):
        src = os.path.join(val_dir, name)
        if not os.path.isfile(src):
            continue
        wnid = labels.get(os.path.splitext(name)[0])
        if wnid is None:
            raise SystemExit(f"{src}: no label in the --val-labels file")
        os.makedirs(os.path.join(val_dir, wnid), exist_ok=True)
        os.replace(src, os.path.join(val_dir, wnid, name))
        moved += 1
    return moved


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/imagenet")
    p.add_argument("--val-labels", help="LOC_val_solution.csv or '<file> <wnid>' lines, for a flat val/")
    p.add_argument("--synset-mapping", help="LOC_synset_mapping.txt ('<wnid> <human label>' lines)")
    args = p.parse_args(argv)
    train_dir, val_dir = os.path.join(args.root, "train"), os.path.join(args.root, "val")
    if not os.path.isdir(train_dir):
        raise SystemExit(f"{train_dir} not found: unpack ILSVRC2012_img_train into <root>/train/<wnid>/")
    if args.val_labels and os.path.isdir(val_dir):
        print(f"sorted {sort_val(val_dir, read_val_labels(args.val_labels))} val images into class folders")
    if args.synset_mapping:
        wnids, human = read_synset_mapping(args.synset_mapping)
    else:
        wnids = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
        human = wnids
    write_list(os.path.join(args.root, "synset_mapping.txt"), [f"{w} {h}" for w, h in zip(wnids, human)])
    known = set(wnids)
    for split_dir, list_name in ((train_dir, "train.txt"), (val_dir, "val.txt")):
        if not os.path.isdir(split_dir):
            continue
        files = [f for f in list_images(split_dir) if f.split("/", 1)[0] in known]
        write_list(os.path.join(args.root, list_name), files)
        print(f"{list_name}: {len(files)} images")
    print(f"synset_mapping.txt: {len(wnids)} classes")


if __name__ == "__main__":
    main()
