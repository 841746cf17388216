"""Command-line plumbing shared by the sampling scripts: argument groups, model loading from
``-r``/``--config``/``--ckpt``, and the per-run output layout."""
from __future__ import annotations

import argparse
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image

from ldm.inference.conditioning import model_kind
from ldm.inference.images import safe_join, safe_name, save_grid, save_images, to_uint8
from ldm.inference.loading import RunFiles, find_run, load_model
from ldm.inference.pipelines import SamplingOptions
from ldm.inference.runtime import PRECISIONS, seed_everything, select_device
from ldm.inference.sampling import SAMPLER_NAMES, ComposedModel, GuideModel, check_experts

__all__ = ["CONCAT_SAMPLERS", "LoadedModel", "TaskRun", "add_concat_task_args", "add_guide_args", "add_model_args",
           "add_output_args", "add_sampling_args", "check_composed", "compose_weight", "composed_from_args",
           "default_scale", "guide_from_args", "load_companion", "model_from_args",
           "options_from_args", "Outputs", "start_task",
           "timestamp"]

# Samplers for concat-conditioned models, DDIM first: classifier-free guidance does not apply.
CONCAT_SAMPLERS = ("ddim", "plms", "dpm", "unipc", "ddpm")


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("-r", "--resume", metavar="RUN_OR_CKPT",
                   help="a run directory (logs/<run>: configs/*.yaml + checkpoints/last.ckpt) or a checkpoint")
    g.add_argument("--config", nargs="+", metavar="YAML",
                   help="model config(s), merged in order; needed for a checkpoint outside a run directory")
    g.add_argument("--ckpt", metavar="PATH", help="checkpoint (.ckpt or .safetensors) to load with --config")
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, mps ... (default: cuda if available, else mps, else cpu)")
    g.add_argument("--no-ema", dest="prefer_ema", action="store_false",
                   help="sample with the trained weights instead of their EMA")


FAST_STEPS = 20  # --fast: DPM-Solver++(2M) steps


def add_sampling_args(p: argparse.ArgumentParser, samplers: Sequence[str] = tuple(SAMPLER_NAMES), steps: int = 50,
                      scale: Optional[float] = 1.0, eta: Optional[float] = 0.0, guidance: bool = True,
                      short_flags: bool = False) -> None:
    """Sampler options; ``short_flags`` adds the original sample_diffusion.py spellings -c and -e."""
    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", choices=list(samplers), default=samplers[0], help="sampler (default %(default)s)")
    g.add_argument(*(["-c"] if short_flags else []), "--steps", "--ddim_steps", dest="steps", type=int,
                   default=steps, help="sampling steps (default %(default)s)")
    if "dpm" in samplers:
        g.add_argument("--fast", action="store_true",
                       help=f"DPM-Solver++(2M) in {FAST_STEPS} steps (Lu et al. 2022b report near-converged "
                            "samples in 15-20 steps): 40%% of the network calls of 50 DDIM steps; overrides "
                            "--sampler and --steps")
    g.add_argument(*(["-e"] if short_flags else []), "--eta", type=float, default=eta,
                   help="DDIM eta: 0 deterministic, 1 ancestral (ddim only; default "
                        f"{'1.0 for ddim, else 0' if eta is None else eta})")
    if guidance:
        g.add_argument("--scale", type=float, default=scale,
                       help="classifier-free guidance scale; 1 = no guidance (default %(default)s)")
    g.add_argument("--seed", type=int, default=42, help="random seed; the same seed reproduces the images "
                   "(default %(default)s)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="network precision via autocast (default %(default)s)")
    g.add_argument("--decode-tile", type=int, default=None, metavar="CELLS",
                   help="decode the latent in overlapping tiles of this many latent cells to bound memory "
                        "(default: automatic beyond twice the training size; 0 = never)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def add_output_args(p: argparse.ArgumentParser, outdir: Optional[str], grid: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--outdir", "-o", default=outdir, help="where images are written (default %(default)s)")
    g.add_argument("--skip_save", action="store_true", help="do not save individual samples")
    if grid:
        g.add_argument("--skip_grid", action="store_true", help="do not save the grid")


@dataclass
class LoadedModel:
    model: Any
    run: Optional[RunFiles]  # None when loaded from --config/--ckpt outside a run directory


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """``-r`` (run directory or checkpoint, configs found beside it) or ``--config`` + ``--ckpt``."""
    device = select_device(args.device)
    if args.resume:
        if args.ckpt:
            raise SystemExit("give either -r/--resume or --ckpt, not both")
        run = find_run(args.resume)
        configs = args.config or run.configs
        if not configs:
            raise SystemExit(f"{run.logdir}/configs has no saved configs for {run.ckpt}; pass --config")
        return LoadedModel(load_model(configs, run.ckpt, device=device, prefer_ema=args.prefer_ema), run)
    if not (args.config and args.ckpt):
        raise SystemExit("no model given: pass -r <run dir or checkpoint>, or --config <yaml> --ckpt <checkpoint>")
    return LoadedModel(load_model(args.config, args.ckpt, device=device, prefer_ema=args.prefer_ema), None)


def add_guide_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("autoguidance (Karras et al. 2024)")
    g.add_argument("--guide-model", metavar="RUN_OR_CKPT", default=None,
                   help="a weaker model of the same task and latents, e.g. an earlier snapshot of the run "
                        "(<run>/checkpoints/trainstep_checkpoints/*.ckpt): every step adds --guide-weight times "
                        "(model - guide) of their conditional estimates to the guided one")
    g.add_argument("--guide-weight", type=float, default=None,
                   help="with --guide-model: the weight a >= 0 of that difference (default 1; "
                        "0: classifier-free guidance alone)")


def load_companion(path: str, flag: str, model: Any, prefer_ema: bool = True) -> Any:
    """A second model (a guide, a noise-level expert, a composed model) from a run directory or
    checkpoint, on ``model``'s device (the loader's default when ``model`` is None); SystemExit
    naming ``flag`` when it cannot be found or has no configs."""
    try:
        run = find_run(path)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"{flag}: {exc}") from exc
    if not run.configs:
        raise SystemExit(f"{flag}: {run.logdir}/configs has no saved configs for {run.ckpt}")
    device = None if model is None else model.alphas_cumprod.device
    return load_model(run.configs, run.ckpt, device=device, prefer_ema=prefer_ema)


def check_composed(other: Any, model: Any, flag: str) -> None:
    """A composed model must estimate the same latents as ``model`` (one first stage; its schedule
    may differ); SystemExit naming ``flag`` otherwise."""
    try:
        check_experts(other, model, what="the composed models", same_schedule=False)
    except ValueError as exc:
        raise SystemExit(f"{flag}: {exc}") from exc


def compose_weight(args: argparse.Namespace) -> float:
    """--compose-weight (default: --scale), refused unless a finite number >= 0."""
    weight = args.scale if args.compose_weight is None else args.compose_weight
    if not (weight >= 0 and weight != float("inf")):
        raise SystemExit(f"--compose-weight {weight}: must be a finite number >= 0")
    return weight


def composed_from_args(args: argparse.Namespace, model: Any = None) -> Optional[ComposedModel]:
    """--compose-model/--compose-weight (default: --scale) as a ``ComposedModel``: a text model on
    ``model``'s device, checked to share its latents (both only when ``model`` is given)."""
    if args.compose_model is None:
        if args.compose_weight is not None:
            raise SystemExit("--compose-weight needs --compose-model")
        return None
    flag = f"--compose-model {args.compose_model}"
    weight = compose_weight(args)
    other = load_companion(args.compose_model, flag, model, args.prefer_ema)
    if model_kind(other) != "text":
        raise SystemExit(f"{flag}: not a text-conditioned model ({model_kind(other)})")
    if model is not None:
        check_composed(other, model, flag)
    return ComposedModel(other, weight)


def check_guide_weight(weight: float) -> float:
    """--guide-weight's value, refused unless a finite number >= 0."""
    if not (weight >= 0 and weight != float("inf")):
        raise SystemExit(f"--guide-weight {weight}: must be a finite number >= 0")
    return weight


def check_guide(guide: Any, model: Any, flag: str) -> None:
    """A guide must be a model of ``model``'s task estimating the same latents (one schedule, one
    first stage); SystemExit naming ``flag`` otherwise."""
    if model_kind(guide) != model_kind(model):
        raise SystemExit(f"{flag}: a {model_kind(guide)} model cannot guide a {model_kind(model)} one")
    try:
        check_experts(guide, model, what="the model and its guide")
    except ValueError as exc:
        raise SystemExit(f"{flag}: {exc}") from exc


def guide_from_args(args: argparse.Namespace, model: Any) -> Optional[GuideModel]:
    """The --guide-model on the sampled model's device, checked to share its task and latents."""
    if args.guide_model is None:
        if args.guide_weight is not None:
            raise SystemExit("--guide-weight needs --guide-model")
        return None
    flag = f"--guide-model {args.guide_model}"
    weight = check_guide_weight(1.0 if args.guide_weight is None else args.guide_weight)
    guide = load_companion(args.guide_model, flag, model, args.prefer_ema)
    check_guide(guide, model, flag)
    return GuideModel(guide, weight)


def options_from_args(args: argparse.Namespace, scale: Optional[float] = None) -> SamplingOptions:
    scale = getattr(args, "scale", None) if scale is None else scale
    if getattr(args, "fast", False):
        args.sampler, args.steps = "dpm", FAST_STEPS
    return SamplingOptions(sampler=args.sampler, steps=args.steps, eta=args.eta if args.eta is not None else 0.0,
                           scale=1.0 if scale is None else scale, precision=args.precision,
                           decode_tile=args.decode_tile, progress=args.progress)


class Outputs:
    """The output folder of one script call: numbered samples, grids, nothing outside ``root``."""

    def __init__(self, root: str | os.PathLike, skip_save: bool = False, skip_grid: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.skip_save, self.skip_grid = skip_save, skip_grid
        self.written: list[Path] = []

    def folder(self, *names: str) -> Path:
        """A sub-folder named from user text (prompts, file stems), sanitised."""
        return safe_join(self.root, *(safe_name(n) for n in names))

    def samples(self, images: torch.Tensor, *names: str, start: Optional[int] = None) -> list[Path]:
        if self.skip_save:
            return []
        paths = save_images(images, self.folder(*names) if names else self.root, start=start)
        self.written += paths
        return paths

    def image(self, image: torch.Tensor, name: str) -> Path:
        """One image (3, H, W) in [-1, 1] as ``<name>.png`` (name sanitised)."""
        path = safe_join(self.root, safe_name(name) + ".png")
        Image.fromarray(to_uint8(image[None] if image.ndim == 3 else image)[0]).save(path)
        self.written.append(path)
        return path

    def grid(self, images: torch.Tensor, name: str, nrow: int) -> Optional[Path]:
        if self.skip_grid or images.numel() == 0:
            return None
        stem, index = safe_name(name), 0
        while (path := safe_join(self.root, f"{stem}-{index:04d}.png")).exists():
            index += 1
        self.written.append(save_grid(images, path, nrow))
        return path


def add_condition_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("condition (text or class-conditional models)")
    g.add_argument("--prompt", default=None, help="prompt for a text-conditioned model")
    g.add_argument("--class", dest="class_label", type=int, default=None, help="class id for a class model")


def add_concat_task_args(p: argparse.ArgumentParser, outdir: str, n_samples: int, per: str) -> None:
    """``--n_samples`` (samples ``per`` input) and the model, sampling and output groups of the scripts
    for concat-conditioned models (super-resolution, semantic synthesis): 100 steps, DDIM eta 1
    by default (see :func:`start_task`), no guidance."""
    p.add_argument("--n_samples", type=int, default=n_samples, help=f"samples per {per} (default %(default)s)")
    add_model_args(p)
    add_sampling_args(p, samplers=CONCAT_SAMPLERS, steps=100, eta=None, guidance=False)
    add_output_args(p, outdir=outdir)


@dataclass
class TaskRun:
    """What a task script needs after parsing its arguments."""

    model: Any
    kind: str                   # model_kind(model)
    run: Optional[RunFiles]     # the run directory the model came from, if any
    options: SamplingOptions
    out: Outputs
    generator: torch.Generator  # seeded from --seed; draws the initial noise


def default_scale(kind: str) -> float:
    """Guidance scale when --scale is not given: 5 for text models (the txt2img default), else 1."""
    return 5.0 if kind == "text" else 1.0


def start_task(args: argparse.Namespace, script: str, kinds: Optional[Sequence[str]] = None, requirement: str = "",
               outdir: Optional[Callable[[LoadedModel], str]] = None) -> TaskRun:
    """The set-up every task script shares: load the model, check it is one of ``kinds`` (else exit:
    "<script> needs <requirement>"), resolve an unset ``--eta`` (1 for DDIM, as the original scripts
    and notebooks sampled, else 0) and an unset ``--scale`` (``default_scale``), open the output
    folder (``args.outdir``, or ``outdir(loaded)``) and seed."""
    loaded = model_from_args(args)
    kind = model_kind(loaded.model)
    if kinds is not None and kind not in kinds:
        raise SystemExit(f"{script} needs {requirement}; this one is {kind!r}")
    if getattr(args, "fast", False):
        args.sampler, args.steps = "dpm", FAST_STEPS
    if args.eta is None:
        args.eta = 1.0 if args.sampler == "ddim" else 0.0
    scale = getattr(args, "scale", None)
    options = options_from_args(args, scale=default_scale(kind) if scale is None else scale)
    root = args.outdir if outdir is None else outdir(loaded)
    out = Outputs(root, skip_save=args.skip_save, skip_grid=getattr(args, "skip_grid", False))
    return TaskRun(loaded.model, kind, loaded.run, options, out, seed_everything(args.seed))
