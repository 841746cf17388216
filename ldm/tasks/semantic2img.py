"""Semantic synthesis (paper Sec. 4.3.2): images from segmentation maps with a LDM whose
SpatialRescaler conditioner is concatenated to the latent.

    ldm-semantic2img -r logs/<run> --input map.png --n_samples 4

A map is a single-channel PNG (mode L or P) whose pixel values are class indices. Maps larger
than the training crops are sampled convolutionally (the paper's 512x1024 landscapes, Fig. 8).
Writes <outdir>/<map name>/NNNNN.png and <outdir>/grid-<map name>-NNNN.png (coloured map first).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ldm.inference import load_label_map, semantic2img
from ldm.inference.cli import add_concat_task_args, start_task
from ldm.inference.conditioning import semantic_classes
from ldm.inference.images import colorize_labels


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="segmentation map PNG(s) of class indices")
    p.add_argument("--n-classes", "--n_classes", dest="n_classes", type=int, default=None,
                   help="number of classes (default: the conditioner's input channels)")
    add_concat_task_args(p, outdir="outputs/semantic-samples", n_samples=2, per="map")
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    task = start_task(args, "semantic2img.py", ["semantic"], "a model concat-conditioned on segmentation maps")
    n_classes = args.n_classes or semantic_classes(task.model)
    out = task.out
    for path in tqdm(args.input, desc="maps", disable=not args.progress or len(args.input) == 1):
        labels = load_label_map(path)
        try:
            images = semantic2img(task.model, labels.repeat(args.n_samples, 1, 1), n_classes, task.options,
                                  generator=task.generator).cpu()
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        stem = Path(path).stem
        out.samples(images, stem)
        out.grid(torch.cat([colorize_labels(labels, n_classes), images]), f"grid-{stem}", nrow=1 + args.n_samples)
    print(f"{len(out.written)} files in {out.root}")
    return out.written


if __name__ == "__main__":
    main()
