#!/usr/bin/env python3
"""Import diffusers-format weights into our checkpoint format, for the model CONFIG describes.

    python scripts/convert_from_diffusers.py exports/my-ldm --config configs/ldm/x.yaml --out models/x.ckpt

The folder's UNet, first stage (vqvae/ or vae/) and, where the config names one, text encoder
(text_encoder/ or bert/; cond_stage/ for the other conditioners) are placed by the inverse of
the export's key mapping; the noise schedule comes from the config and must agree with the
folder's scheduler. Shapes that do not fit the config are an error naming the first mismatched
tensor. The result loads with ``--ckpt`` in every script or as ``model.params.ckpt_path`` for
fine-tuning (``.safetensors`` output works too). Needs the diffusers package.
"""
from __future__ import annotations

import argparse
import sys

from ldm.checkpoint import save_state_dict
from ldm.config.errors import ConfigError
from ldm.interop import ConversionError, import_folder


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="a diffusers folder (pipeline, components or a single autoencoder)")
    p.add_argument("--config", nargs="+", required=True, metavar="YAML",
                   help="our model config(s), merged in order, describing the model the folder holds")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write (.ckpt or .safetensors)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sd = import_folder(args.folder, args.config)
    except (ConversionError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_state_dict(args.out, sd)
    print(f"wrote {len(sd)} tensors to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
