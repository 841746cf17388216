"""Image-to-image: noise an image's latent part of the way and denoise it (SDEdit),
optionally towards a prompt or class; --strength sets how far (0: unchanged ... 1: from noise).

    ldm-img2img -r logs/<run>_demo_ldm_text --init-img in.png --strength 0.6 \\
        --prompt "a green star on a white background"

Writes <outdir>/samples/NNNNN.png and a grid <outdir>/grid-NNNN.png (input first).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ldm.inference import img2img, load_image
from ldm.inference.cli import (add_condition_args, add_model_args, add_output_args, add_sampling_args,
                               start_task)
from ldm.inference.conditioning import user_conditioning


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-img", "--init_img", dest="init_img", required=True, help="the input image")
    p.add_argument("--strength", type=float, default=0.75,
                   help="fraction of the DDIM steps run from the noised input, in (0, 1] (default %(default)s)")
    p.add_argument("--H", type=int, default=None, help="resize the input to this height (a multiple of f)")
    p.add_argument("--W", type=int, default=None, help="resize the input to this width (a multiple of f)")
    p.add_argument("--n_samples", type=int, default=2, help="variations per iteration (default %(default)s)")
    p.add_argument("--n_iter", type=int, default=1, help="iterations (default %(default)s)")
    add_condition_args(p)
    add_model_args(p)
    add_sampling_args(p, samplers=("ddim", "plms", "dpm", "unipc"), steps=50, scale=None, eta=0.0)
    add_output_args(p, outdir="outputs/img2img-samples")
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    size = None
    if args.H or args.W:
        if not (args.H and args.W):
            raise SystemExit("give both --H and --W to resize the input")
        size = (args.H, args.W)
    task = start_task(args, "img2img.py")
    model, opts, out, generator = task.model, task.options, task.out, task.generator
    init = load_image(args.init_img, size=size)
    cond, uncond = user_conditioning(model, args.n_samples, args.prompt, args.class_label)
    rows = []
    for _ in tqdm(range(args.n_iter), desc="iterations", disable=not args.progress or args.n_iter == 1):
        images = img2img(model, init.repeat(args.n_samples, 1, 1, 1), args.strength, opts, cond=cond,
                         uncond=uncond, generator=generator).cpu()
        out.samples(images, "samples")
        rows.append(images)
    out.grid(torch.cat([init] + rows), "grid", nrow=args.n_samples + 1 if args.n_iter == 1 else args.n_samples)
    print(f"{len(out.written)} files in {out.root}")
    return out.written


if __name__ == "__main__":
    main()
