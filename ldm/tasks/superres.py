"""Super-resolution (paper Sec. 4.4): upscale images with a concat-conditioned LDM-SR / LDM-BSR.

    ldm-superres -r logs/<run> --input low_res.png --outdir outputs/superres

The low-resolution image is concatenated to the latent, so the output is f times larger (x4 for
the released bsr_sr). Inputs larger than the training size are sampled convolutionally in one
piece (Sec. 4.3.2) and decoded in tiles. Writes <outdir>/<name>_x<f>.png and a comparison grid
<outdir>/grid-<name>-NNNN.png (bicubic upscaling, result).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldm.inference import load_image, superres
from ldm.inference.cli import add_concat_task_args, start_task
from ldm.inference.images import IMAGE_SUFFIXES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", default=[], help="low-resolution image file(s)")
    p.add_argument("--indir", default=None, help="a folder of low-resolution images")
    add_concat_task_args(p, outdir="outputs/superres-samples", n_samples=1, per="input")
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    inputs = list(args.input)
    if args.indir:
        inputs += sorted(str(p) for p in Path(args.indir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not inputs:
        raise SystemExit("no inputs: pass --input or --indir")
    task = start_task(args, "superres.py", ["superres"],
                      "a concat-conditioned super-resolution model (cond_stage_key LR_image)")
    out = task.out
    for path in tqdm(inputs, desc="images", disable=not args.progress or len(inputs) == 1):
        low = load_image(path)
        images = superres(task.model, low.repeat(args.n_samples, 1, 1, 1), task.options, generator=task.generator).cpu()
        factor = images.shape[-1] // low.shape[-1]
        stem = Path(path).stem
        if not args.skip_save:
            for k, image in enumerate(images):
                out.image(image, f"{stem}_x{factor}" + (f"_{k}" if args.n_samples > 1 else ""))
        bicubic = F.interpolate(low, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        out.grid(torch.cat([bicubic, images]), f"grid-{stem}", nrow=1 + args.n_samples)
    print(f"{len(out.written)} files in {out.root}")
    return out.written


if __name__ == "__main__":
    main()
