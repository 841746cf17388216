#!/usr/bin/env python3
"""Export a model trained here as a diffusers folder (safetensors weights + JSON configs).

    python scripts/convert_to_diffusers.py -r logs/<run> --out exports/my-ldm
    python scripts/convert_to_diffusers.py --config configs/ldm/x.yaml --ckpt model.ckpt --out exports/x --dtype fp16
    python scripts/convert_to_diffusers.py -r logs/<run> --out exports/my-ldm --push-to-hub user/my-ldm

Unconditional models become an LDMPipeline, CLIP text-to-image models a StableDiffusionPipeline,
BERT text-to-image models an LDMTextToImagePipeline, x4 super-resolution models an
LDMSuperResolutionPipeline, autoencoders an AutoencoderKL or VQModel folder; class-conditional,
inpainting, semantic and layout models are written as loadable components with a README.
``DiffusionPipeline.from_pretrained(OUT)`` loads the pipelines offline. EMA weights are exported
when the checkpoint has them (--no-ema: the trained weights). Needs the diffusers package.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ldm.checkpoint import CheckpointError
from ldm.config.errors import ConfigError
from ldm.inference import find_run
from ldm.interop import ConversionError
from ldm.modules.encoders.tokenizers import TokenizerUnavailableError

# what a wrong path, config or model gives: reported in one line, without a traceback
USER_ERRORS = (ConversionError, ConfigError, CheckpointError, TokenizerUnavailableError, FileNotFoundError,
               FileExistsError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--resume", metavar="RUN_OR_CKPT",
                   help="a run directory (configs/*.yaml + checkpoints/last.ckpt) or a checkpoint inside one")
    p.add_argument("--config", nargs="+", metavar="YAML", help="model config(s), merged in order (with --ckpt)")
    p.add_argument("--ckpt", metavar="PATH", help="checkpoint (.ckpt or .safetensors) to export with --config")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not exist or be empty)")
    p.add_argument("--no-ema", dest="prefer_ema", action="store_false",
                   help="export the trained weights instead of their EMA")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="precision of the written weights (default %(default)s)")
    p.add_argument("--metrics", metavar="JSON", default=None,
                   help="evaluation figures for the model card (scripts/evaluate.py --json output; "
                        "default: <run>/metrics.json when it exists)")
    p.add_argument("--license", default="mit", help="license named in the model card (default %(default)s)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="then upload the folder to this Hugging Face Hub repository (needs network and a login)")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return p


def resolve(args: argparse.Namespace) -> tuple[list[str], Path, Path | None]:
    """(config paths, checkpoint, run directory or None) from -r or --config/--ckpt."""
    if args.resume:
        if args.ckpt:
            raise SystemExit("give either -r/--resume or --ckpt, not both")
        run = find_run(args.resume)
        configs = args.config or [str(c) for c in run.configs]
        if not configs:
            raise SystemExit(f"{run.logdir}/configs has no saved configs for {run.ckpt}; pass --config")
        return configs, run.ckpt, run.logdir
    if not (args.config and args.ckpt):
        raise SystemExit("no model given: pass -r <run dir or checkpoint>, or --config <yaml> --ckpt <checkpoint>")
    return list(args.config), Path(args.ckpt), None


def read_metrics(path: str | None, run: Path | None) -> dict | None:
    if path is None and run is not None and (run / "metrics.json").is_file():
        path = str(run / "metrics.json")
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--metrics {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"--metrics {path}: expected a JSON object of metric names to values")
    return data


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configs, ckpt, run = resolve(args)
    metrics = read_metrics(args.metrics, run)
    from ldm.interop import export_checkpoint, push_to_hub

    try:
        result = export_checkpoint(configs, ckpt, args.out, prefer_ema=args.prefer_ema, dtype=args.dtype,
                                   metrics=metrics, license=args.license)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = result.pipeline or ("an autoencoder" if result.kind == "autoencoder"
                               else "components (see README_components.md)")
    print(f"wrote {result.kind} model as {what} to {result.out} ({'EMA' if result.ema else 'trained'} weights, "
          f"{len(result.files)} files)")
    if args.push_to_hub:
        try:
            url = push_to_hub(result.out, args.push_to_hub, private=args.private)
        except (RuntimeError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
