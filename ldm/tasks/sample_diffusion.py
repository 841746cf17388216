"""Unconditional or class-conditional samples in bulk from a trained LDM (paper Sec. 4.1, 4.3.1).

    ldm-sample-diffusion -r logs/<run> -n 64 --batch_size 16 -c 50 -e 1.0
    ldm-sample-diffusion -r logs/<run> -n 64 --classes 0 3 5 --scale 3.0
    ldm-sample-diffusion -r logs/<run> --classes 0 1 --scale 3 \
        --guide-model logs/<run>/checkpoints/trainstep_checkpoints/<earlier>.ckpt --guide-weight 2

Writes <outdir>/img/NNNNN.png per sample, <outdir>/grid-0000.png (the first --grid_max samples)
and <outdir>/samples_<N>x<H>x<W>x3.npz with the uint8 samples under ``arr_0`` (and the class
labels under ``labels``), the layout FID/IS tools read. Default outdir: <run>/samples/<time>.

Sample i depends only on (--seed, i): its initial and per-step noise come from generators seeded
with (seed, i) (ldm.eval.shards), so --batch_size and the number of processes change no image.
Under ``torchrun --nproc_per_node K`` each process draws a block of the N samples and writes
their PNGs; rank 0 gathers them and writes the grid and the one .npz of exactly N samples.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ldm.eval.shards import per_sample_noise, sample_noise
from ldm.inference import class_conditioning, generate, save_npz, to_uint8
from ldm.inference.cli import add_guide_args, add_model_args, add_sampling_args, guide_from_args, start_task, timestamp
from ldm.inference.distributed import join_processes


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
    add_guide_args(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    if args.n_samples < 1 or args.batch_size < 1:
        raise SystemExit("-n and --batch_size must be positive")
    share = join_processes()
    try:
        return _sample(args, share)
    finally:
        share.close()


def _sample(args: argparse.Namespace, share) -> list[Path]:
    args.device = share.device(args.device)

    def outdir(loaded) -> str:  # one folder for all ranks
        return share.broadcast(args.outdir or str((loaded.run.logdir if loaded.run else Path("outputs")) / "samples"
                                                  / timestamp()))

    task = start_task(args, "sample_diffusion.py", ["unconditional", "class"],
                      "an unconditional or class-conditional model (use txt2img.py, inpaint.py, superres.py, "
                      "semantic2img.py or layout2img.py for the others)", outdir=outdir)
    model, kind, opts, out, generator = task.model, task.kind, task.options, task.out, task.generator
    if kind == "unconditional" and (args.classes or opts.scale != 1.0):
        raise SystemExit("--classes/--scale need a class-conditional model; this one is unconditional")
    guide = guide_from_args(args, model)
    labels = None
    if kind == "class":
        if args.classes:
            labels = np.resize(np.asarray(args.classes, dtype=np.int64), args.n_samples)
        else:
            n_classes = int(model.cond_stage_model.n_classes)
            labels = torch.randint(0, n_classes, (args.n_samples,), generator=generator).numpy()
    latent = (model.channels, model.image_size, model.image_size)
    mine = share.indices(args.n_samples)
    batches = []
    for start in tqdm(range(0, len(mine), args.batch_size), desc=f"batches (rank {share.rank})" if share.distributed
                      else "batches", disable=not args.progress):
        idx = mine[start:start + args.batch_size]
        cond = uncond = None
        if labels is not None:
            cond, uncond = class_conditioning(model, labels[idx].tolist())
            if opts.scale != 1.0 and uncond is None:
                raise SystemExit(f"--scale {opts.scale} needs a model trained with a null class (ucg_rate > 0)")
            if guide is not None:
                guide.cond = class_conditioning(guide.model, labels[idx].tolist())[0]
        images = generate(model, len(idx), opts, cond=cond, uncond=uncond, generator=generator,
                          x_T=sample_noise(args.seed, idx, latent),
                          noise_sampler=per_sample_noise(args.seed, idx, latent, model.device), guide=guide).cpu()
        out.samples(images, "img", start=int(idx[0]))
        batches.append(images)
    # uint8 travels (a quarter of the floats); rank 0 checks that every sample arrived exactly once.
    parts = share.gather((mine, to_uint8(torch.cat(batches)) if batches else None))
    if parts is None:  # not rank 0: its samples went to rank 0, which writes the npz and the grid
        return out.written
    if not np.array_equal(np.concatenate([i for i, _ in parts]), np.arange(args.n_samples)):
        raise RuntimeError("the processes' shares do not add up to the samples 0..N-1 exactly once")
    arr = np.concatenate([a for _, a in parts if a is not None])
    images = torch.from_numpy(arr[:args.grid_max]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    npz = save_npz(out.root / f"samples_{'x'.join(map(str, arr.shape))}.npz", arr, labels)
    grid = out.grid(images, "grid", nrow=int(math.ceil(math.sqrt(len(images)))))
    print(f"{len(arr)} samples in {out.root} (npz: {npz.name}{', grid: ' + grid.name if grid else ''})")
    return out.written + [npz]


if __name__ == "__main__":
    main()
