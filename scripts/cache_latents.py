"""Encode a latent diffusion config's data once with its frozen first stage, then train from it.

    python scripts/cache_latents.py --base configs/demo/ldm_class.yaml [key=value ...] --out cache/demo
    python main.py --base configs/demo/ldm_class.yaml [the same key=value ...] -t --latent-cache cache/demo \
        model.params.representation_alignment=null   # REPA's teacher needs the images a cache lacks

KL first stages are stored as the posterior's mean and std (training still draws z ~ q(z|x) every
step); VQ first stages as the encoder output LatentDiffusion trains on. A frozen conditioning
encoder's output is stored too when no classifier-free-guidance dropout acts on its input. The
cache records a fingerprint of the first stage's weights and config, the conditioning encoder and
the data config; `main.py --latent-cache` refuses a cache whose fingerprint differs, naming what
changed. Datasets that augment at random (crops, flips) are refused.

--format tar writes each split as WebDataset-style tar shards (<out>/<split>/shard-00000.tar:
<key>.<column>.npy per tensor, <key>.json for strings; see ldm/data/latent_cache.py), which
`--latent-cache` reads as well and standard webdataset readers can iterate; the default, pt, is
one torch.save file per shard, read memory-mapped.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch

from ldm.config import ConfigError, check_config_tree, set_trust_all_targets
from ldm.config.loading import load_experiment
from ldm.data.latent_cache import build_cache
from ldm.util import instantiate_from_config


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--base", nargs="+", required=True, metavar="config.yaml",
                   help="the training configs, merged left to right (as for main.py)")
    p.add_argument("--out", required=True, help="directory to write the cache to (its old contents are replaced)")
    p.add_argument("--splits", nargs="+", default=["train", "validation"], help="data splits to encode")
    p.add_argument("--batch-size", type=int, default=32, help="images encoded at once")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    p.add_argument("--shard-size", type=int, default=8192, help="examples per shard file")
    p.add_argument("--format", choices=["pt", "tar"], default="pt",
                   help="shard files: pt (torch.save, memory-mapped) or tar (WebDataset-style, .npy + .json)")
    p.add_argument("--keep", nargs="*", default=[], metavar="KEY",
                   help="further batch keys to store (the condition, the mask, scalars and strings always are)")
    p.add_argument("-s", "--seed", type=int, default=23,
                   help="seed before building the model, as main.py's --seed (a first stage without a "
                        "checkpoint is initialised at random: only the same seed gives the same weights)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--trust-config-targets", action="store_true",
                   help="allow config targets outside the allow-list (only for configs you wrote)")
    args, overrides = p.parse_known_args(argv)
    overrides += [b for b in args.base if "=" in b]
    args.base = [b for b in args.base if "=" not in b]
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (config overrides must look like key.path=value)")
    if args.batch_size < 1 or args.shard_size < 1:
        p.error("--batch-size and --shard-size must be >= 1")
    return args, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = parse_args(argv)
    set_trust_all_targets(args.trust_config_targets)
    try:
        config = load_experiment(args.base, overrides)
        config.pop("lightning", None)
        check_config_tree(config)
        if "data" not in config:
            raise ConfigError("data", "no `data` section: nothing to encode")
        pl.seed_everything(args.seed)  # main.py builds the model right after seed_everything(--seed)
        model = instantiate_from_config(config.model, path="model")
        if not hasattr(model, "first_stage_model"):
            raise ConfigError("model.target", f"{type(model).__name__} has no first stage to cache latents of")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model.to(device).eval()
        root = build_cache(model, config, args.out, splits=args.splits, batch_size=args.batch_size,
                           num_workers=args.num_workers, shard_size=args.shard_size, extra_keys=args.keep,
                           format=args.format)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    finally:
        set_trust_all_targets(False)
    print(f"latent cache written to {root}; train with: python main.py --base {' '.join(args.base)} "
          f"{' '.join(overrides)} -t --latent-cache {root}".replace("  ", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
