"""Evaluation: the paper's metrics (FID, KID, IS, precision/recall, PSNR, SSIM, LPIPS, classifier
accuracy) on maintained implementations (torch-fidelity, torchmetrics), image sets, sharded and
resumable sampling, the task protocols, and the registry of the paper's table rows.

See docs/evaluation.md; ``scripts/evaluate.py`` and ``scripts/reproduce.py`` are the commands.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public names and the submodule that defines each. They load on first use (PEP 562), so that a
# light submodule (e.g. ldm.eval.demo_figures' constants) can be imported without torch.
_EXPORTS = {
    "features": ("FeatureExtractor", "Features", "ModuleFeatures", "extract_features"),
    "images": ("ArrayImages", "DatasetImages", "FolderImages", "ImageSet", "ShardImages", "check_paired",
               "open_images"),
    "inception": ("FID_DIMS", "INCEPTION_FILENAME", "INCEPTION_URL", "INCEPTION_WEIGHTS_ENV", "InceptionFeatures",
                  "InceptionWeightsMissing", "find_inception_weights", "inception_cache_path"),
    "metrics": ("Statistics", "accuracy", "fid", "inception_score", "kid", "lpips_values", "precision_recall",
                "psnr_values", "ssim_values"),
    "scoring": ("METRICS", "ScoreSettings", "format_table", "parse_metrics", "reference_statistics", "score"),
    "shards": ("ShardStore", "batch_generator", "sample_noise"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from ldm.eval.features import FeatureExtractor, Features, ModuleFeatures, extract_features
    from ldm.eval.images import (ArrayImages, DatasetImages, FolderImages, ImageSet, ShardImages, check_paired,
                                 open_images)
    from ldm.eval.inception import (FID_DIMS, INCEPTION_FILENAME, INCEPTION_URL, INCEPTION_WEIGHTS_ENV,
                                    InceptionFeatures, InceptionWeightsMissing, find_inception_weights,
                                    inception_cache_path)
    from ldm.eval.metrics import (Statistics, accuracy, fid, inception_score, kid, lpips_values, precision_recall,
                                  psnr_values, ssim_values)
    from ldm.eval.scoring import METRICS, ScoreSettings, format_table, parse_metrics, reference_statistics, score
    from ldm.eval.shards import ShardStore, batch_generator, sample_noise
