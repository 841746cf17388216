"""Score an image set against a reference: which metrics need what, the reference-statistics
cache, and the result table.

    results = score(real, fake, ["fid", "kid", "psnr"], extractor=lambda: InceptionFeatures(dims=2048))

``real`` is an image set or cached :class:`~ldm.eval.metrics.Statistics` (FID only). The feature
extractor and LPIPS network are built lazily, only when a metric needs them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ldm.eval import metrics as M
from ldm.eval.features import FeatureExtractor, Features, extract_features
from ldm.eval.images import ImageSet, check_paired

__all__ = ["METRICS", "ScoreSettings", "default_stats_cache", "format_table", "parse_metrics",
           "reference_statistics", "score"]

METRICS = ("fid", "kid", "isc", "prc", "psnr", "ssim", "lpips", "acc")
NEED_REAL_FEATURES = ("kid", "prc")
PAIRED = ("psnr", "ssim", "lpips")
STATS_CACHE_ENV = "LDM_STATS_CACHE"
# result key -> (label, higher is better)
KEYS = {"fid": ("FID", False), "kid_mean": ("KID", False), "kid_std": ("KID std", None),
        "isc_mean": ("IS", True), "isc_std": ("IS std", None), "precision": ("Precision", True),
        "recall": ("Recall", True), "psnr": ("PSNR [dB]", True), "psnr_std": ("PSNR std", None),
        "ssim": ("SSIM", True), "ssim_std": ("SSIM std", None), "lpips": ("LPIPS", False),
        "lpips_std": ("LPIPS std", None), "accuracy": ("Accuracy", True)}


def parse_metrics(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics: unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{','.join(METRICS)}")
    return list(dict.fromkeys(names))


def default_stats_cache() -> Path:
    """``$LDM_STATS_CACHE``, else ``~/.cache/ldm/fid_stats``."""
    env = os.environ.get(STATS_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ldm" / "fid_stats"


@dataclass
class ScoreSettings:
    batch_size: int = 50                # images per feature-extractor / LPIPS batch
    kid_subsets: int = 100
    kid_subset_size: int = 1000         # capped at the smaller set's size
    isc_splits: int = 10
    prc_k: int = 3                      # Kynkäänniemi et al.'s k, as in the paper
    stats_cache: Optional[Path] = field(default_factory=default_stats_cache)  # None: no cache
    progress: bool = True


def _cache_file(cache: Path, real: ImageSet, extractor: FeatureExtractor) -> tuple[Path, str]:
    fingerprint = real.fingerprint()
    key = hashlib.sha1(f"{fingerprint}\0{extractor.name}".encode()).hexdigest()[:20]
    return cache / f"{key}.npz", fingerprint


def reference_statistics(real: ImageSet, extractor: FeatureExtractor, settings: ScoreSettings,
                         features: Optional[Features] = None) -> M.Statistics:
    """The real set's statistics, from the cache when its fingerprint and extractor match,
    else computed (from ``features`` if given) and cached."""
    path, fingerprint = (None, real.fingerprint()) if settings.stats_cache is None else \
        _cache_file(settings.stats_cache, real, extractor)
    if path is not None and path.is_file():
        stats = M.Statistics.load(path)
        if stats.fingerprint == fingerprint and stats.extractor == extractor.name:
            return stats
    if features is None:
        features = extract_features(extractor, real.batches(settings.batch_size), len(real), "real features",
                                    settings.progress)
    stats = M.Statistics.from_features(features.features, fingerprint, extractor.name)
    if path is not None:
        stats.save(path)
    return stats


def score(real: Union[ImageSet, M.Statistics, None], fake: ImageSet, metrics: Sequence[str],
          extractor: Callable[[], FeatureExtractor], lpips: Optional[Callable[[], Any]] = None,
          settings: Optional[ScoreSettings] = None) -> dict[str, Any]:
    """The requested metrics of ``fake`` (against ``real`` where they compare two sets)."""
    settings = settings or ScoreSettings()
    metrics = list(metrics)
    needs_real = [m for m in metrics if m in ("fid", *NEED_REAL_FEATURES, *PAIRED)]
    if needs_real and real is None:
        raise ValueError(f"{', '.join(needs_real)} compare with real images: pass --real")
    if isinstance(real, M.Statistics):
        bad = [m for m in needs_real if m != "fid"]
        if bad:
            raise ValueError(f"--real is a statistics file, which has FID statistics only; {', '.join(bad)} "
                             "need the real images themselves")
    out: dict[str, Any] = {}
    if any(m in metrics for m in PAIRED):
        check_paired(real, fake)
    if any(m in metrics for m in ("fid", "kid", "isc", "prc", "acc")):
        ext = extractor()
        out["feature_extractor"] = ext.name
        fake_f = extract_features(ext, fake.batches(settings.batch_size), len(fake), "generated features",
                                  settings.progress)
        real_f = None
        if any(m in metrics for m in NEED_REAL_FEATURES):
            real_f = extract_features(ext, real.batches(settings.batch_size), len(real), "real features",
                                      settings.progress)
        if "fid" in metrics:
            if isinstance(real, M.Statistics):
                ref = real
                if ref.extractor != ext.name:
                    raise ValueError(f"--real statistics were computed with {ref.extractor!r} ({ref.dims} features), "
                                     f"but this evaluation uses {ext.name!r}: pass the matching --fid-features, or "
                                     "the real images")
            else:
                ref = reference_statistics(real, ext, settings, real_f)
            out["fid"] = M.fid(ref, M.Statistics.from_features(fake_f.features, extractor=ext.name))
        if "kid" in metrics:
            out["kid_mean"], out["kid_std"] = M.kid(real_f.features, fake_f.features, settings.kid_subsets,
                                                    settings.kid_subset_size)
        if "isc" in metrics:
            out["isc_mean"], out["isc_std"] = M.inception_score(fake_f.logits, settings.isc_splits)
        if "prc" in metrics:
            out["precision"], out["recall"] = M.precision_recall(real_f.features, fake_f.features, settings.prc_k)
        if "acc" in metrics:
            if fake.labels is None:
                raise ValueError(f"acc needs the class labels of the samples; {fake.path} has none (class-conditional "
                                 "samples from scripts/evaluate.py or sample_diffusion.py store them)")
            if getattr(ext, "is_inception", False):
                raise ValueError("acc needs a classifier of the model's classes: pass --feature-extractor "
                                 "(the Inception logits are ImageNet-2012 classes in another order)")
            out["accuracy"] = M.accuracy(fake_f.logits, fake.labels)
    paired = [m for m in metrics if m in PAIRED]
    if paired:
        net = lpips() if "lpips" in paired else None
        from tqdm import tqdm

        pairs = tqdm(zip(real.batches(settings.batch_size), fake.batches(settings.batch_size)),
                     total=-(-len(fake) // settings.batch_size), desc="paired metrics", disable=not settings.progress)
        values = M.paired_values(pairs, paired, net)
        for m in paired:
            out[m], out[f"{m}_std"] = M.summary(values[m])
    return out


def format_table(results: dict[str, Any], paper: Optional[dict[str, Any]] = None) -> str:
    """One line per figure; with ``paper``, the paper's figure beside ours."""
    lines = []
    extractor = results.get("feature_extractor")
    if extractor:
        lines.append(f"features: {extractor}")
    width = max(len(label) for label, _ in KEYS.values())
    header = f"{'metric':<{width}}  {'ours':>12}" + (f"  {'paper':>12}" if paper is not None else "")
    lines.append(header)
    lines.append("-" * len(header))
    for key, (label, _) in KEYS.items():
        if key not in results:
            continue
        row = f"{label:<{width}}  {results[key]:>12.4f}"
        if paper is not None:
            ref = paper.get(key)
            row += f"  {ref:>12}" if ref is not None else f"  {'-':>12}"
        lines.append(row)
    return "\n".join(lines)
