"""Feature extractors for the sample-quality metrics: one interface for the standard FID
Inception network and for any other network.

An extractor is called on a batch of uint8 images (B, 3, H, W) and returns ``(features, logits)``:
float tensors (B, D) and (B, K). FID, KID and precision/recall use the features, the Inception
Score and classifier accuracy the logits. ``ModuleFeatures`` adapts any ``torch.nn.Module`` that
returns ``(features, logits)`` for images in [-1, 1] (for instance a classifier trained on the
data at hand); its scores are then *not* Inception scores, and every report names the extractor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Protocol

import numpy as np
import torch
from tqdm import tqdm

__all__ = ["FeatureExtractor", "Features", "ModuleFeatures", "extract_features"]


class FeatureExtractor(Protocol):
    name: str           # shown beside every score and stored in cached statistics
    is_inception: bool  # False: FID/KID/IS-like scores of another network, labelled as such
    dims: int           # feature dimension D

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, H, W) -> (features (B, D), logits (B, K))."""
        ...


class ModuleFeatures:
    """A ``torch.nn.Module`` mapping images (B, 3, H, W) in [-1, 1] to ``(features, logits)``."""

    is_inception = False

    def __init__(self, module: torch.nn.Module, name: str, device: Optional[torch.device] = None):
        self.module = module.eval().requires_grad_(False)
        self.device = device or next(iter(module.parameters()), torch.empty(0)).device
        self.module.to(self.device)
        self.name = f"{name} (not Inception)"
        self.dims = -1  # known after the first batch

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(self.device).float() / 127.5 - 1.0
        out = self.module(x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(f"feature extractor {self.name}: the module must return (features, logits), "
                            f"got {type(out).__name__}")
        features, logits = (t.float().flatten(1) for t in out)
        self.dims = features.shape[1]
        return features, logits


@dataclass
class Features:
    """Features and logits of one image set, float32 on the CPU."""

    features: np.ndarray  # (N, D)
    logits: np.ndarray    # (N, K)
    extractor: str

    def __len__(self) -> int:
        return len(self.features)


def extract_features(extractor: FeatureExtractor, batches: Iterable[np.ndarray], total: Optional[int] = None,
                     desc: str = "features", progress: bool = True) -> Features:
    """Run ``extractor`` over uint8 (B, H, W, 3) batches."""
    feats, logits = [], []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
            f, lg = extractor(x)
            feats.append(f.detach().float().cpu().numpy())
            logits.append(lg.detach().float().cpu().numpy())
            bar.update(len(batch))
    if not feats:
        raise ValueError(f"{desc}: no images")
    return Features(np.concatenate(feats), np.concatenate(logits), extractor.name)


