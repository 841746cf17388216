#!/usr/bin/env python3
"""Unconditional or class-conditional samples in bulk from a trained LDM (paper Sec. 4.1, 4.3.1).

    python scripts/sample_diffusion.py -r logs/<run> -n 64 --batch_size 16 -c 50 -e 1.0
    python scripts/sample_diffusion.py -r logs/<run> -n 64 --classes 0 3 5 --scale 3.0

Writes <outdir>/img/NNNNN.png per sample, <outdir>/grid-0000.png (the first --grid_max samples)
and <outdir>/samples_<N>x<H>x<W>x3.npz with the uint8 samples under ``arr_0`` (and the class
labels under ``labels``), the layout FID/IS tools read. Default outdir: <run>/samples/<time>.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ldm.inference import class_conditioning, generate, model_kind, save_npz, seed_everything, to_uint8  # noqa: E402
from ldm.inference.cli import (Outputs, add_model_args, add_sampling_args, model_from_args,  # noqa: E402
                               options_from_args, timestamp)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("-n", "--n_samples", type=int, default=16, help="number of samples (default %(default)s)")
    p.add_argument("--batch_size", type=int, default=8, help="samples per forward pass (default %(default)s)")
    p.add_argument("--classes", type=int, nargs="+", default=None,
                   help="class ids for a class-conditional model, cycled over the samples "
                        "(default: drawn uniformly with the seed)")
    p.add_argument("-l", "--logdir", "--outdir", dest="outdir", default=None,
                   help="output folder (default <run>/samples/<time>)")
    p.add_argument("--grid_max", type=int, default=64, help="samples in the grid (default %(default)s)")
    p.add_argument("--skip_save", action="store_true", help="only write the .npz and the grid")
    add_sampling_args(p, samplers=("ddim", "plms", "dpm", "unipc", "ddpm"), steps=50, scale=1.0, eta=None,
                      short_flags=True)  # eta default: 1.0 for ddim (as the original script), else 0
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    if args.n_samples < 1 or args.batch_size < 1:
        raise SystemExit("-n and --batch_size must be positive")
    if args.eta is None:
        args.eta = 1.0 if args.sampler == "ddim" else 0.0
    loaded = model_from_args(args)
    model, kind = loaded.model, model_kind(loaded.model)
    if kind not in ("unconditional", "class"):
        raise SystemExit(f"sample_diffusion.py samples unconditional or class-conditional models; this one is "
                         f"{kind!r} (use txt2img.py, inpaint.py, superres.py, semantic2img.py or layout2img.py)")
    if kind == "unconditional" and (args.classes or args.scale != 1.0):
        raise SystemExit("--classes/--scale need a class-conditional model; this one is unconditional")
    outdir = args.outdir or str((loaded.run.logdir if loaded.run else Path("outputs")) / "samples" / timestamp())
    out = Outputs(outdir, skip_save=args.skip_save)
    generator = seed_everything(args.seed)
    labels = None
    if kind == "class":
        if args.classes:
            labels = np.resize(np.asarray(args.classes, dtype=np.int64), args.n_samples)
        else:
            n_classes = int(model.cond_stage_model.n_classes)
            labels = torch.randint(0, n_classes, (args.n_samples,), generator=generator).numpy()
    opts = options_from_args(args)
    batches = []
    for start in tqdm(range(0, args.n_samples, args.batch_size), desc="batches", disable=not args.progress):
        n = min(args.batch_size, args.n_samples - start)
        cond = uncond = None
        if labels is not None:
            cond, uncond = class_conditioning(model, labels[start:start + n].tolist())
            if opts.scale != 1.0 and uncond is None:
                raise SystemExit(f"--scale {opts.scale} needs a model trained with a null class (ucg_rate > 0)")
        images = generate(model, n, opts, cond=cond, uncond=uncond, generator=generator).cpu()
        out.samples(images, "img", start=start)
        batches.append(images)
    images = torch.cat(batches)
    arr = to_uint8(images)
    npz = save_npz(out.root / f"samples_{'x'.join(map(str, arr.shape))}.npz", arr, labels)
    grid = out.grid(images[:args.grid_max], "grid", nrow=int(math.ceil(math.sqrt(min(len(images), args.grid_max)))))
    print(f"{len(images)} samples in {out.root} (npz: {npz.name}{', grid: ' + grid.name if grid else ''})")
    return out.written + [npz]


if __name__ == "__main__":
    main()
