"""Inpainting (paper Sec. 4.5): fill the white region of a mask, keeping the rest of the image.

    ldm-inpaint -r logs/<run> --indir inputs/ --outdir outputs/inpainting
    ldm-inpaint -r logs/<run> --image photo.png --mask photo_mask.png

--indir holds pairs x.png + x_mask.png (mask white = fill in). A concat-conditioned inpainting
model (as the released inpainting_big) is conditioned on the masked image and the mask; any other
model (unconditional, class or text) inpaints by mask-guided DDIM, re-imposing the known latent
at every step. Writes <outdir>/<name>.png per pair and <outdir>/grid-NNNN.png (image, masked
image, result per row).
"""
from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ldm.inference import inpaint, load_image, load_mask
from ldm.inference.cli import (add_condition_args, add_model_args, add_output_args, add_sampling_args,
                               start_task)
from ldm.inference.conditioning import user_conditioning


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--indir", default=None, help="folder of x.png + x_mask.png pairs")
    g.add_argument("--image", nargs="+", default=[], help="image file(s)")
    g.add_argument("--mask", nargs="+", default=[], help="mask file(s), one per --image (white = fill in)")
    add_condition_args(p)
    add_model_args(p)
    add_sampling_args(p, samplers=("ddim", "plms", "ddpm", "dpm", "unipc"), steps=50, scale=None, eta=0.0)
    add_output_args(p, outdir="outputs/inpainting-samples")
    return p


def find_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    if len(args.image) != len(args.mask):
        raise SystemExit(f"got {len(args.image)} --image but {len(args.mask)} --mask files; give one mask per image")
    pairs = list(zip(args.image, args.mask))
    if args.indir:
        masks = sorted(glob.glob(os.path.join(glob.escape(args.indir), "*_mask.png")))
        for m in masks:
            image = m[: -len("_mask.png")] + ".png"
            if not os.path.isfile(image):
                raise SystemExit(f"{m}: no matching image {image}")
            pairs.append((image, m))
        if not masks:
            raise SystemExit(f"--indir {args.indir}: no *_mask.png files")
    if not pairs:
        raise SystemExit("no inputs: pass --indir or --image/--mask")
    return pairs


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    pairs = find_pairs(args)
    task = start_task(args, "inpaint.py")
    model, opts, out, generator = task.model, task.options, task.out, task.generator
    cond = uncond = None
    if task.kind != "inpainting":  # mask-guided sampling with any other model
        cond, uncond = user_conditioning(model, 1, args.prompt, args.class_label)
    elif args.prompt is not None or args.class_label is not None:
        raise SystemExit("this inpainting model is conditioned on the image and mask only: drop --prompt/--class")
    rows = []
    for image_path, mask_path in tqdm(pairs, desc="images", disable=not args.progress or len(pairs) == 1):
        image, mask = load_image(image_path), load_mask(mask_path)
        try:
            result = inpaint(model, image, mask, opts, cond=cond, uncond=uncond, generator=generator)
        except ValueError as exc:
            raise ValueError(f"{image_path} / {mask_path}: {exc}") from None
        result_image = result.images.cpu()
        if not args.skip_save:
            out.image(result_image[0], Path(image_path).stem)
        rows.append(torch.cat([image, image * (1 - mask) + mask, result_image]))
    if len({r.shape for r in rows}) == 1:
        out.grid(torch.cat(rows), "grid", nrow=3)
    else:  # images of different sizes: one comparison grid each
        for (image_path, _), row in zip(pairs, rows):
            out.grid(row, f"grid-{Path(image_path).stem}", nrow=3)
    print(f"{len(out.written)} files in {out.root}")
    return out.written


if __name__ == "__main__":
    main()
