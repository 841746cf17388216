"""Evaluation: the paper's metrics (FID, KID, IS, precision/recall, PSNR, SSIM, LPIPS, classifier
accuracy) on maintained implementations (torch-fidelity, torchmetrics), image sets, sharded and
resumable sampling, the task protocols, and the registry of the paper's table rows.

See docs/evaluation.md; ``scripts/evaluate.py`` and ``scripts/reproduce.py`` are the commands.
"""
from ldm.eval.features import FeatureExtractor, Features, ModuleFeatures, extract_features
from ldm.eval.images import ArrayImages, DatasetImages, FolderImages, ImageSet, ShardImages, check_paired, open_images
from ldm.eval.inception import (FID_DIMS, INCEPTION_FILENAME, INCEPTION_URL, INCEPTION_WEIGHTS_ENV, InceptionFeatures,
                                InceptionWeightsMissing, find_inception_weights, inception_cache_path)
from ldm.eval.metrics import (Statistics, accuracy, fid, inception_score, kid, lpips_values, precision_recall,
                              psnr_values, ssim_values)
from ldm.eval.scoring import METRICS, ScoreSettings, format_table, parse_metrics, reference_statistics, score
from ldm.eval.shards import ShardStore, batch_generator, sample_noise

__all__ = [
    "FID_DIMS", "INCEPTION_FILENAME", "INCEPTION_URL", "INCEPTION_WEIGHTS_ENV", "METRICS", "ArrayImages",
    "DatasetImages",
    "FeatureExtractor", "Features", "FolderImages", "ImageSet", "InceptionFeatures", "InceptionWeightsMissing",
    "ModuleFeatures", "ScoreSettings", "ShardImages", "ShardStore", "Statistics", "accuracy", "batch_generator",
    "check_paired", "extract_features", "fid", "find_inception_weights", "format_table", "inception_cache_path",
    "inception_score", "kid", "lpips_values", "open_images", "parse_metrics", "precision_recall", "psnr_values",
    "reference_statistics", "sample_noise", "score", "ssim_values",
]
