#!/usr/bin/env python3
"""Evaluate samples or a model with the paper's metrics (docs/evaluation.md).

Score two image sets (folders, .npz samples, or cached statistics for --real):

    python scripts/evaluate.py --real data/eval/celebahq256 --fake samples.npz --metrics fid,kid,prc

Sample a model in resumable shards, then score (rerun the same command to resume):

    python scripts/evaluate.py --config models/ldm/celeba256/config.yaml --ckpt models/ldm/celeba256/model.ckpt \\
        -n 50000 --steps 500 --real data/eval/celebahq256 --metrics fid,prc
    python scripts/evaluate.py -r logs/<run> --task autoencoder --metrics fid,psnr,ssim,lpips     # Tab. 8
    python scripts/evaluate.py -r logs/<sr run> --task superres --metrics fid,isc,psnr,ssim            # Tab. 4
    python scripts/evaluate.py --config models/ldm/inpainting_big/config.yaml \\
        --ckpt models/ldm/inpainting_big/model.ckpt --task inpainting --mask-kind hard --metrics fid,lpips

Sampling splits its shards between processes under torchrun (rank 0 scores; docs/distributed.md):

    torchrun --nproc_per_node 8 scripts/evaluate.py -r logs/<run> -n 50000 --real data/eval/celebahq256 --metrics fid

Figures go to the terminal and, with --json, to a file under the keys fid, kid_mean, kid_std,
isc_mean, isc_std, precision, recall, psnr, ssim, lpips (and *_std, accuracy), for the metrics
asked for. Inception-based scores use the standard FID Inception weights (--inception-weights).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omegaconf import OmegaConf  # noqa: E402

from ldm.checkpoint import atomic_path, load_into, load_state_dict  # noqa: E402
from ldm.config import trust_all_targets  # noqa: E402
from ldm.config.errors import ConfigError  # noqa: E402
from ldm.eval import (FID_DIMS, DatasetImages, InceptionFeatures, InceptionWeightsMissing,  # noqa: E402
                      ModuleFeatures, ScoreSettings, ShardImages, ShardStore, Statistics, format_table,
                      open_images, parse_metrics, score)
from ldm.eval.protocols import (generation_batches, inpainting_batches, read_captions,  # noqa: E402
                                reconstruction_batches, superres_batches, validation_dataset)
from ldm.eval.scoring import default_stats_cache  # noqa: E402
from ldm.inference import SAMPLER_NAMES, find_run, model_kind, select_device  # noqa: E402
from ldm.inference.cli import add_model_args, add_sampling_args, model_from_args, options_from_args  # noqa: E402
from ldm.inference.distributed import Share, join_processes  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402

TASKS = ("samples", "autoencoder", "superres", "inpainting")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("scoring")
    g.add_argument("--real", metavar="PATH", help="reference: folder of images, .npz samples (arr_0) or a "
                   "statistics .npz (FID only); paired tasks default to the dataset images they used")
    g.add_argument("--real-data", action="store_true",
                   help="reference: the images of the dataset split given by --data/--split/--data-param "
                        "(default: the run's configs), instead of --real")
    g.add_argument("--fake", metavar="PATH", help="images to score: folder, .npz (arr_0) or a sampling --outdir")
    g.add_argument("--metrics", default="fid", help="comma-separated: fid,kid,isc,prc,psnr,ssim,lpips,acc "
                   "(default %(default)s)")
    g.add_argument("--fid-features", type=int, choices=FID_DIMS, default=2048,
                   help="Inception feature layer for FID/KID/precision-recall (default %(default)s, the paper's)")
    g.add_argument("--inception-weights", metavar="FILE", default=None,
                   help="the FID Inception weights (weights-inception-2015-12-05-6726825d.pth; default: "
                        "$LDM_INCEPTION_WEIGHTS, then the torch hub cache)")
    g.add_argument("--feature-extractor", metavar="YAML", default=None,
                   help="use another network instead of Inception: a config with target/params (and optional "
                        "ckpt) of a torch.nn.Module returning (features, logits); its scores are not Inception scores")
    g.add_argument("--trust-config-targets", action="store_true",
                   help="let the --feature-extractor, --data and model configs name targets outside the allow-list "
                        "(only for configs you trust)")
    g.add_argument("--json", metavar="OUT", default=None, help="also write the figures to this JSON file")
    g.add_argument("--eval-batch-size", type=int, default=50, help="images per metric batch (default %(default)s)")
    g.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default %(default)s)")
    g.add_argument("--stats-cache", metavar="DIR", default=None,
                   help=f"where reference statistics are cached (default $LDM_STATS_CACHE or {default_stats_cache()})")
    g.add_argument("--no-stats-cache", action="store_true", help="neither read nor write cached statistics")
    g.add_argument("--save-stats", metavar="OUT", default=None,
                   help="write the FID statistics of --real to OUT.npz (usable as --real later)")
    add_model_args(p)
    t = p.add_argument_group("sampling then scoring (with -r or --config/--ckpt)")
    t.add_argument("--task", choices=TASKS, default="samples",
                   help="samples: from noise (unconditional, class-balanced, or captions); autoencoder: "
                        "reconstructions (Tab. 8); superres: x4 upscaling; inpainting (default %(default)s)")
    t.add_argument("-n", "--n_samples", type=int, default=None,
                   help="number of samples (default: 1000; paired tasks: the whole split; text: one per caption)")
    t.add_argument("--batch_size", type=int, default=8, help="samples per forward pass (default %(default)s)")
    t.add_argument("--shard-size", type=int, default=1000, help="samples per shard file (default %(default)s)")
    t.add_argument("--outdir", "-o", default=None, help="where shards are written (default <run>/eval/<settings>)")
    t.add_argument("--captions", metavar="FILE", default=None, help="text models: one caption per line")
    t.add_argument("--data", metavar="YAML", nargs="+", default=None,
                   help="config(s) with the data section whose split is evaluated (default: the run's configs)")
    t.add_argument("--split", default="validation", help="data.params.<split> to use (default %(default)s)")
    t.add_argument("--data-param", metavar="KEY=VALUE", action="append", default=[],
                   help="override a parameter of the evaluated split, e.g. size=512 (repeatable; values are YAML)")
    t.add_argument("--mask-kind", default=None, help="inpainting: mask kind of the split, e.g. hard (40-50%% "
                   "masked) or mixed (default: the dataset config's)")
    add_sampling_args(p, samplers=tuple(SAMPLER_NAMES), steps=50, scale=1.0, eta=0.0)
    return p


# ---------------------------------------------------------------------------------------------
# feature extractors

def extractor_factory(args: argparse.Namespace):
    def build():
        device = select_device(args.device)
        if args.feature_extractor:
            return module_extractor(args.feature_extractor, device)
        return InceptionFeatures(args.inception_weights, dims=args.fid_features, device=device)
    return build


def module_extractor(path: str, device) -> ModuleFeatures:
    """``target``/``params`` (+ optional ``ckpt``, ``name``) of a module returning (features, logits)."""
    cfg = OmegaConf.load(path)
    if "target" not in cfg:
        raise ConfigError(path, "a feature extractor config needs `target` (and `params`)")
    module = instantiate_from_config({"target": cfg.target, "params": cfg.get("params") or {}}, path=path)
    if cfg.get("ckpt"):
        load_into(module, load_state_dict(cfg.ckpt), strict=True, path=str(cfg.ckpt))
    return ModuleFeatures(module, str(cfg.get("name") or cfg.target), device=device)


def lpips_factory(args: argparse.Namespace):
    def build():
        from ldm.modules.losses.lpips import LPIPS

        net = LPIPS().eval().to(select_device(args.device))
        net.load_trunk()
        return net
    return build


# ---------------------------------------------------------------------------------------------
# sampling then scoring

def default_outdir(args: argparse.Namespace, logdir: Optional[Path]) -> Path:
    name = f"{args.task}_{args.sampler}_s{args.steps}_eta{args.eta:g}_w{args.scale:g}_seed{args.seed}"
    if args.mask_kind:
        name += f"_{args.mask_kind}"
    return (logdir if logdir else Path("outputs")) / "eval" / name


def split_images(args: argparse.Namespace) -> DatasetImages:
    """The images of the evaluated split (--data, else the run's configs, else --config)."""
    configs = args.data
    if not configs and args.resume:
        configs = find_run(args.resume).configs
    configs = configs or args.config
    if not configs:
        raise SystemExit("--real-data needs the config of a dataset: pass --data <config with a data section>")
    overrides = data_overrides(args)
    dataset = validation_dataset(configs, args.split, overrides)
    description = json.dumps({"data": [str(c) for c in configs], "split": args.split, "params": overrides},
                             sort_keys=True)
    return DatasetImages(dataset, description)


def data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--data-param KEY=VALUE pairs (YAML values) and --mask-kind."""
    import yaml

    out: dict[str, Any] = {}
    for item in args.data_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--data-param {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    if args.mask_kind:
        out["mask_kind"] = args.mask_kind
    return out


def sample_shards(args: argparse.Namespace, share: Share = Share(0, 1, 0)) -> tuple[Path, bool]:
    """Draw (or resume) the samples of --task; returns the output folder and whether it holds
    dataset references beside the outputs. Under torchrun the processes split the shards."""
    args.device = share.device(args.device)
    loaded = model_from_args(args)
    model = loaded.model
    opts = options_from_args(args)
    settings: dict[str, Any] = {"task": args.task, "checkpoint": str(loaded.run.ckpt if loaded.run else args.ckpt),
                                "sampler": args.sampler, "steps": args.steps, "eta": args.eta, "scale": args.scale,
                                "seed": args.seed, "precision": args.precision, "ema": args.prefer_ema}
    paired = args.task != "samples"
    if args.task != "autoencoder" and not hasattr(model, "alphas_cumprod"):
        raise SystemExit(f"--task {args.task} samples a diffusion model; this checkpoint holds a "
                         f"{type(model).__name__} (for a first stage use --task autoencoder)")
    if args.task == "samples":
        captions = read_captions(args.captions) if args.captions else None
        make = generation_batches(model, opts, args.seed, captions)
        n = args.n_samples or (len(captions) if captions else 1000)
        if captions:
            settings["captions"] = str(args.captions)
    else:
        configs = args.data or (loaded.run.configs if loaded.run else args.config)
        overrides = data_overrides(args)
        dataset = validation_dataset(configs, args.split, overrides)
        settings.update(data=[str(c) for c in configs], split=args.split, data_params=overrides)
        if args.task == "autoencoder":
            ae = model.first_stage_model if hasattr(model, "first_stage_model") else model
            make = reconstruction_batches(ae, dataset, next(ae.parameters()).device)
        elif args.task == "superres":
            if model_kind(model) != "superres":
                raise SystemExit(f"--task superres needs a super-resolution model; this one is {model_kind(model)!r}")
            make = superres_batches(model, dataset, opts, args.seed)
        else:
            if model_kind(model) != "inpainting":
                raise SystemExit(f"--task inpainting needs an inpainting model; this one is {model_kind(model)!r}")
            make = inpainting_batches(model, dataset, opts, args.seed)
        n = min(args.n_samples or len(dataset), len(dataset))
    outdir = Path(args.outdir) if args.outdir else default_outdir(args, loaded.run.logdir if loaded.run else None)
    drawn = ShardStore(outdir).fill(n, args.shard_size, args.batch_size, settings, make, progress=args.progress,
                                    desc=args.task, rank=share.rank, world_size=share.world_size)
    drawn = sum(share.gather(drawn) or [drawn])  # rank 0 reports all processes' work
    if share.rank == 0:
        print(f"{outdir}: {n} samples ({drawn} drawn now, {n - drawn} found from an earlier run)")
    return outdir, paired


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    with trust_all_targets(args.trust_config_targets):
        return evaluate(args)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    try:
        metrics = parse_metrics(args.metrics)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    for flag, value in (("--eval-batch-size", args.eval_batch_size), ("--batch_size", args.batch_size),
                        ("--shard-size", args.shard_size), ("-n", args.n_samples or 1)):
        if value < 1:
            raise SystemExit(f"{flag} must be positive, got {value}")
    has_model = bool(args.resume or args.ckpt or args.config)
    if has_model and args.fake:
        raise SystemExit("give either a model (-r or --config/--ckpt) to sample from, or --fake images, not both")
    settings = ScoreSettings(batch_size=args.eval_batch_size, kid_subset_size=args.kid_subset_size,
                             stats_cache=None if args.no_stats_cache else
                             (Path(args.stats_cache) if args.stats_cache else default_stats_cache()),
                             progress=args.progress)
    try:
        real = None
        if args.real and args.real_data:
            raise SystemExit("give either --real or --real-data, not both")
        if args.real_data:
            real = split_images(args)
        if args.real:
            real = Statistics.load(args.real) if Statistics.is_statistics_file(args.real) \
                else open_images(args.real, "--real")
        if args.save_stats:
            return save_statistics(args, real, settings)
        if has_model:
            share = join_processes()
            try:
                outdir, paired = sample_shards(args, share)
            finally:
                share.close()  # waits for every process's shards
            if share.rank != 0:  # rank 0 scores
                return {}
            fake = ShardImages(outdir)
            if real is None and paired:
                real = ShardImages(outdir, "reference")
        elif args.fake:
            fake = open_images(args.fake, "--fake")
        else:
            raise SystemExit("nothing to evaluate: pass --fake PATH, or a model (-r or --config/--ckpt) to sample")
        results = score(real, fake, metrics, extractor_factory(args), lpips_factory(args), settings)
    except (InceptionWeightsMissing, FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        raise SystemExit(f"evaluate.py: {exc}") from None
    print(format_table(results))
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def save_statistics(args: argparse.Namespace, real: Any, settings: ScoreSettings) -> dict[str, Any]:
    from ldm.eval import extract_features

    if real is None or isinstance(real, Statistics):
        raise SystemExit("--save-stats needs --real images (a folder or an .npz of samples)")
    ext = extractor_factory(args)()
    feats = extract_features(ext, real.batches(settings.batch_size), len(real), "real features", settings.progress)
    stats = Statistics.from_features(feats.features, real.fingerprint(), ext.name)
    stats.save(args.save_stats)
    print(f"{args.save_stats}: FID statistics of {stats.count} images ({ext.name})")
    return {"count": stats.count, "feature_extractor": ext.name}


if __name__ == "__main__":
    main()
