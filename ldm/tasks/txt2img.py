"""Text-to-image with a text-conditioned LDM (paper Sec. 4.3.1), with classifier-free guidance.

    ldm-txt2img -r logs/<run>_demo_ldm_text --prompt "a red circle on a blue background"
    ldm-txt2img --config model.yaml --ckpt model.ckpt --from-file prompts.txt --scale 5

Each prompt gets <outdir>/samples/<prompt as a safe folder name>/NNNNN.png and a grid
<outdir>/grid-<prompt>-NNNN.png with one row per --n_iter. The same --seed gives the same images.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ldm.inference import generate, initial_noise, latent_size, prompt_conditioning
from ldm.inference.cli import add_model_args, add_output_args, add_sampling_args, start_task


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("prompts")
    g.add_argument("--prompt", default=None, help="the prompt to render")
    g.add_argument("--from-file", "--from_file", dest="from_file", default=None,
                   help="a text file with one prompt per line (empty lines are skipped)")
    g.add_argument("--H", type=int, default=None, help="image height in px (default: the training size)")
    g.add_argument("--W", type=int, default=None, help="image width in px (default: the training size)")
    g.add_argument("--n_samples", type=int, default=4, help="images per prompt and iteration (batch size)")
    g.add_argument("--n_iter", type=int, default=1, help="iterations per prompt (default %(default)s)")
    g.add_argument("--fixed_code", action="store_true",
                   help="use the same starting noise for every iteration and prompt")
    add_model_args(p)
    add_sampling_args(p, samplers=("ddim", "plms", "dpm", "unipc"), steps=50, scale=5.0, eta=0.0)
    add_output_args(p, outdir="outputs/txt2img-samples")
    return p


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.from_file:
        with open(args.from_file, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
        if not prompts:
            raise SystemExit(f"--from-file {args.from_file}: no prompts in the file")
        return prompts
    if args.prompt is None:
        raise SystemExit("give a prompt with --prompt \"...\" or a file with --from-file")
    return [args.prompt]


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    prompts = read_prompts(args)
    if args.n_samples < 1 or args.n_iter < 1:
        raise SystemExit("--n_samples and --n_iter must be positive")
    task = start_task(args, "txt2img.py", ["text"], "a text-conditioned model")
    model, opts, out, generator = task.model, task.options, task.out, task.generator
    h, w = latent_size(model, args.H, args.W)
    shape = (args.n_samples, model.channels, h, w)
    fixed = initial_noise(shape, generator, model.alphas_cumprod.device) if args.fixed_code else None
    for prompt in tqdm(prompts, desc="prompts", disable=not args.progress or len(prompts) == 1):
        cond, uncond = prompt_conditioning(model, [prompt] * args.n_samples)
        rows = []
        for _ in range(args.n_iter):
            images = generate(model, args.n_samples, opts, cond=cond, uncond=uncond, size=(h, w),
                              generator=generator, x_T=fixed).cpu()
            out.samples(images, "samples", prompt)
            rows.append(images)
        out.grid(torch.cat(rows), f"grid-{prompt}", nrow=args.n_samples)
    print(f"{len(out.written)} files in {out.root}")
    return out.written


if __name__ == "__main__":
    main()
