"""Command-line interface of `main.py`: the original CompVis flags, working on Lightning 2.

Unknown trailing arguments of the form ``key.path=value`` are OmegaConf dotlist overrides applied
after the `--base` configs are merged.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train or test a first-stage autoencoder or a latent diffusion model from YAML configs.",
        epilog="Trailing key.path=value arguments override config entries, e.g. "
        "model.params.embed_dim=4 data.params.batch_size=8 lightning.trainer.max_steps=100.",
    )
    p.add_argument("-n", "--name", type=str, const=True, default="", nargs="?",
                   help="postfix for the run directory name (default: name of the first --base config)")
    p.add_argument("-r", "--resume", type=str, const=True, default="", nargs="?",
                   help="resume from a run directory or a checkpoint inside one; reuses the run's saved configs")
    p.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=list(),
                   help="config files, merged left to right; later ones override earlier ones")
    p.add_argument("-t", "--train", type=str2bool, const=True, default=False, nargs="?", help="train")
    p.add_argument("--no-test", type=str2bool, const=True, default=False, nargs="?",
                   help="skip testing after training")
    p.add_argument("-p", "--project", help="name of a new or existing project")
    p.add_argument("-d", "--debug", type=str2bool, nargs="?", const=True, default=False,
                   help="debug mode: run directory under <logdir>/debug, no crash checkpoint")
    p.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    p.add_argument("-f", "--postfix", type=str, default="", help="post-postfix for the default name")
    p.add_argument("-l", "--logdir", type=str, default="logs", help="directory for logging data")
    p.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=False,
                   help="scale base_learning_rate by accumulate_grad_batches * num_devices * num_nodes * "
                        "batch_size (off by default: the original turned it on silently)")
    g = p.add_argument_group("hardware (Lightning 2)")
    g.add_argument("--gpus", type=str, default=None,
                   help="legacy: comma-separated GPU ids like '0,1' (trailing comma allowed) or a count; "
                        "mapped to --accelerator gpu --devices")
    g.add_argument("--accelerator", type=str, default=None, help="cpu, gpu, mps, auto (default: auto)")
    g.add_argument("--devices", type=str, default=None, help="number of devices, a list like 0,1, or auto")
    g.add_argument("--num_nodes", type=int, default=None, help="number of nodes")
    g.add_argument("--strategy", type=str, default=None, help="e.g. ddp, fsdp, auto")
    g.add_argument("--precision", type=str, default=None, help="32, 16-mixed, bf16-mixed, ...")
    g.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    g.add_argument("--max_epochs", type=int, default=None, help="stop after this many epochs")
    o = p.add_argument_group("run")
    o.add_argument("--logger", choices=["tensorboard", "csv", "wandb", "none"], default=None,
                   help="experiment logger (default: lightning.logger in the config, else tensorboard)")
    o.add_argument("--wandb_offline", type=str2bool, nargs="?", const=True, default=False,
                   help="with --logger wandb: log offline (sync later with `wandb sync`)")
    o.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the resolved config and the model/data summary, then exit")
    o.add_argument("--trust-config-targets", dest="trust_config_targets", action="store_true",
                   help="allow configs to name objects that are not on the allow-list "
                        "(ldm/config/allowed_targets.py); only for configs you wrote: a target can run "
                        "arbitrary code")
    o.add_argument("--latent-cache", dest="latent_cache", type=str, default=None, metavar="DIR",
                   help="train from the first-stage latents in DIR (written by scripts/cache_latents.py for "
                        "the same configs) instead of encoding every batch")
    o.add_argument("--allow-missing-ckpt", dest="allow_missing_ckpt", action="store_true",
                   help="warn instead of failing when a config's ckpt_path does not exist (random init)")
    return p


BOOL_FLAGS = ("-t", "--train", "--no-test", "-d", "--debug", "--scale_lr", "--wandb_offline")
_BOOL_WORDS = ("yes", "true", "t", "y", "1", "no", "false", "f", "n", "0")


def _explicit_bools(argv: Sequence[str]) -> list[str]:
    """`-t model.x=1` must not read the override as the flag's value: give bare flags `true`."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in BOOL_FLAGS and (nxt is None or nxt.lower() not in _BOOL_WORDS):
            out.append("true")
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    opt, unknown = parser.parse_known_args(_explicit_bools(sys.argv[1:] if argv is None else list(argv)))
    # `--base a.yaml key=value` : nargs="*" swallows the override; hand it back.
    overrides = [b for b in opt.base if "=" in b and not os.path.exists(b)]
    opt.base = [b for b in opt.base if b not in overrides]
    unknown = overrides + unknown
    bad = [u for u in unknown if "=" not in u or u.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} "
                     "(config overrides must look like key.path=value)")
    if opt.resume is True or opt.name is True:
        parser.error("-r/--resume and -n/--name need a value")
    if opt.name and opt.resume:
        parser.error("-n/--name cannot be combined with -r/--resume: a resumed run keeps its name "
                     "(use -n with --base to start a new run from a checkpoint via model.params.ckpt_path)")
    if not opt.base and not opt.resume:
        parser.error("give at least one config with --base (or a run to continue with --resume)")
    return opt, unknown


def parse_gpus(spec: str) -> tuple[str, int | list[int]]:
    """Map the legacy ``--gpus`` value to (accelerator, devices).

    '0,1' and '0,' name device ids; a bare integer is a count; '-1' means all devices.
    """
    spec = spec.strip()
    if spec in ("", "0") and "," not in spec:
        return "cpu", 1
    if "," in spec:
        try:
            ids = [int(x) for x in spec.split(",") if x.strip() != ""]
        except ValueError:
            raise ValueError(f"--gpus: expected comma-separated integer ids like '0,1', got {spec!r}") from None
        return "gpu", ids
    try:
        n = int(spec)
    except ValueError:
        raise ValueError(f"--gpus: expected an id list like '0,1' or a count, got {spec!r}") from None
    return "gpu", -1 if n < 0 else n
