"""Layout-to-image (paper Sec. 4.3.1): images from bounding boxes, encoded as tokens and attended
to by the UNet through cross-attention.

    ldm-layout2img -r logs/<run> --layout boxes.json --n_samples 4

boxes.json: {"objects": [{"class": 3, "bbox": [x0, y0, x1, y1]}, ...]} with coordinates in [0, 1]
(or a list of such layouts; see ldm/inference/layouts.py). Writes <outdir>/<name>-<k>/NNNNN.png
and a grid per layout, the drawn boxes first.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ldm.inference import generate, latent_size, layout_tokenizer, layout_tokens, read_layouts
from ldm.inference.cli import add_model_args, add_output_args, add_sampling_args, start_task
from ldm.inference.layouts import draw_layout, null_layout_conditioning


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", required=True, help="JSON file with one layout or a list of layouts")
    p.add_argument("--n-classes", "--n_classes", dest="n_classes", type=int, default=None,
                   help="object classes of the model (validates class ids; default: any id below the padding token)")
    p.add_argument("--grid-size", dest="grid", type=int, default=64,
                   help="corner quantisation grid the model was trained with (default %(default)s)")
    p.add_argument("--n_samples", type=int, default=4, help="images per layout (default %(default)s)")
    p.add_argument("--H", type=int, default=None, help="image height in px (default: the training size)")
    p.add_argument("--W", type=int, default=None, help="image width in px (default: the training size)")
    add_model_args(p)
    add_sampling_args(p, samplers=("ddim", "plms", "dpm", "unipc"), steps=100, scale=1.0, eta=None)
    add_output_args(p, outdir="outputs/layout2img-samples")
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    layouts = read_layouts(args.layout)
    task = start_task(args, "layout2img.py", ["layout"],
                      "a model conditioned on box tokens (cond_stage_key coordinates_bbox)")
    model, opts, out, generator = task.model, task.options, task.out, task.generator
    tokenizer = layout_tokenizer(model, args.n_classes, args.grid)
    h, w = latent_size(model, args.H, args.W)
    uncond = null_layout_conditioning(model, tokenizer, args.n_samples) if opts.scale != 1.0 else None
    stem = Path(args.layout).stem
    for k, layout in enumerate(tqdm(layouts, desc="layouts", disable=not args.progress or len(layouts) == 1)):
        tokens = layout_tokens(tokenizer, layout)[None].repeat(args.n_samples, 1)
        with torch.no_grad():
            cond = model.get_learned_conditioning(tokens.to(model.alphas_cumprod.device))
        images = generate(model, args.n_samples, opts, cond=cond, uncond=uncond, size=(h, w),
                          generator=generator).cpu()
        name = f"{stem}-{k}"
        out.samples(images, name)
        out.grid(torch.cat([draw_layout(layout, *images.shape[-2:]), images]), f"grid-{name}",
                 nrow=1 + args.n_samples)
    print(f"{len(out.written)} files in {out.root}")
    return out.written


if __name__ == "__main__":
    main()
