"""Text-to-image with a text-conditioned LDM (paper Sec. 4.3.1), with classifier-free guidance.

    ldm-txt2img -r logs/<run>_demo_ldm_text --prompt "a red circle on a blue background"
    ldm-txt2img --config model.yaml --ckpt model.ckpt --from-file prompts.txt --scale 5
    ldm-txt2img -r logs/<eps run> --high-noise-expert logs/<x0 run> --switch-t 600 --prompt "..."
    ldm-txt2img -r logs/<run> --no-ema --guide-model logs/<run>/checkpoints/trainstep_checkpoints/<earlier>.ckpt \
        --guide-weight 2 --prompt "..."
    ldm-txt2img -r logs/<colour run> --compose-model logs/<shape run> --compose-weight 3 --prompt "..."

With --high-noise-expert a second text model denoises the noise levels above timestep
--switch-t's and the -r model the rest (an ensemble of expert denoisers, Balaji et al. 2022,
eDiff-I), each with its own text encoder and the same guidance scale. Both must share the first
stage and the noise schedule. With --guide-model a weaker text model of the same latents (an
earlier snapshot of the run) autoguides every step (Karras et al. 2024), each model with its own
text encoder; it cannot be combined with --high-noise-expert. With --compose-model a second text
model of the same latents adds its own classifier-free guidance direction, weighted by
--compose-weight, at every step whose noise level its schedule covers (composable diffusion,
Liu et al. 2022): D = D_guided(x) + b (D_2(x | prompt) - D_2(x | "")). Two models that learnt
different parts of the prompts (one the colours, one the shapes) then draw both.

Each prompt gets <outdir>/samples/<prompt as a safe folder name>/NNNNN.png and a grid
<outdir>/grid-<prompt>-NNNN.png with one row per --n_iter. The same --seed gives the same images.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ldm.inference import (HighNoiseExpert, check_experts, generate, initial_noise, latent_size, model_kind,
                           prompt_conditioning)
from ldm.inference.cli import (add_guide_args, add_model_args, add_output_args, add_sampling_args, composed_from_args,
                               guide_from_args,
                               load_companion, start_task)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("prompts")
    g.add_argument("--prompt", nargs="+", default=None,
                   help="the prompt to render; several are rendered one after another in one process (one model "
                        "load), their noise drawn in turn from --seed's generator")
    g.add_argument("--from-file", "--from_file", dest="from_file", default=None,
                   help="a text file with one prompt per line (empty lines are skipped)")
    g.add_argument("--H", type=int, default=None, help="image height in px (default: the training size)")
    g.add_argument("--W", type=int, default=None, help="image width in px (default: the training size)")
    g.add_argument("--n_samples", type=int, default=4, help="images per prompt and iteration (batch size)")
    g.add_argument("--n_iter", type=int, default=1, help="iterations per prompt (default %(default)s)")
    g.add_argument("--fixed_code", action="store_true",
                   help="use the same starting noise for every iteration and prompt")
    add_model_args(p)
    g = p.add_argument_group("noise-level experts")
    g.add_argument("--high-noise-expert", metavar="RUN_OR_CKPT", default=None,
                   help="a second text model (run directory or checkpoint) that denoises the noisiest levels")
    g.add_argument("--switch-t", type=int, default=None,
                   help="with --high-noise-expert: it answers above this timestep's noise level, the -r model "
                        "at and below it (0 <= T < the schedule's length)")
    add_guide_args(p)
    g = p.add_argument_group("composition (Liu et al. 2022)")
    g.add_argument("--compose-model", metavar="RUN_OR_CKPT", default=None,
                   help="a second text model (run directory or checkpoint) of the same latents whose guidance "
                        "direction is added at every step")
    g.add_argument("--compose-weight", type=float, default=None,
                   help="with --compose-model: the weight b >= 0 of its direction (default: --scale)")
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
    return list(args.prompt)


def load_expert(args: argparse.Namespace, model: torch.nn.Module) -> Optional[HighNoiseExpert]:
    """The --high-noise-expert model on the sampled model's device, checked against it."""
    if args.high_noise_expert is None:
        if args.switch_t is not None:
            raise SystemExit("--switch-t needs --high-noise-expert")
        return None
    flag = f"--high-noise-expert {args.high_noise_expert}"
    if args.switch_t is None:
        raise SystemExit(f"{flag}: give --switch-t T (the expert answers above timestep T's noise level)")
    if not 0 <= args.switch_t < model.num_timesteps:
        raise SystemExit(f"--switch-t {args.switch_t}: must lie in [0, {model.num_timesteps - 1}]")
    expert = load_companion(args.high_noise_expert, flag, model, args.prefer_ema)
    if model_kind(expert) != "text":
        raise SystemExit(f"{flag}: not a text-conditioned model ({model_kind(expert)})")
    try:
        check_experts(expert, model)
    except ValueError as exc:
        raise SystemExit(f"{flag}: {exc}") from exc
    return HighNoiseExpert(expert, args.switch_t)


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    args = parser().parse_args(argv)
    prompts = read_prompts(args)
    if args.n_samples < 1 or args.n_iter < 1:
        raise SystemExit("--n_samples and --n_iter must be positive")
    if args.guide_model is not None and args.high_noise_expert is not None:  # before loading either
        raise SystemExit("--guide-model and --high-noise-expert cannot be combined; use one of them")
    if args.compose_model is not None and args.high_noise_expert is not None:
        raise SystemExit("--compose-model and --high-noise-expert cannot be combined; use one of them")
    task = start_task(args, "txt2img.py", ["text"], "a text-conditioned model")
    model, opts, out, generator = task.model, task.options, task.out, task.generator
    expert = load_expert(args, model)
    guide = guide_from_args(args, model)
    compose = composed_from_args(args, model)
    h, w = latent_size(model, args.H, args.W)
    shape = (args.n_samples, model.channels, h, w)
    fixed = initial_noise(shape, generator, model.alphas_cumprod.device) if args.fixed_code else None
    for prompt in tqdm(prompts, desc="prompts", disable=not args.progress or len(prompts) == 1):
        cond, uncond = prompt_conditioning(model, [prompt] * args.n_samples)
        if expert is not None:
            expert.cond, expert.uncond = prompt_conditioning(expert.model, [prompt] * args.n_samples)
        if guide is not None:
            guide.cond = prompt_conditioning(guide.model, [prompt] * args.n_samples)[0]
        if compose is not None:
            compose.cond, compose.uncond = prompt_conditioning(compose.model, [prompt] * args.n_samples)
        rows = []
        for _ in range(args.n_iter):
            images = generate(model, args.n_samples, opts, cond=cond, uncond=uncond, size=(h, w),
                              generator=generator, x_T=fixed, expert=expert, guide=guide,
                              compose=compose).cpu()
            out.samples(images, "samples", prompt)
            rows.append(images)
        out.grid(torch.cat(rows), f"grid-{prompt}", nrow=args.n_samples)
    if expert is not None:
        print(f"--high-noise-expert answered {expert.calls['high']} of "
              f"{expert.calls['high'] + expert.calls['low']} network calls (above t = {expert.switch_t})")
    if compose is not None:
        print(f"--compose-model added its guidance to {compose.calls['composed']} of "
              f"{compose.calls['composed'] + compose.calls['alone']} steps")
    print(f"{len(out.written)} files in {out.root}")
    return out.written


if __name__ == "__main__":
    main()
