"""The standard FID Inception network (Heusel et al. 2017): torch-fidelity's bit-exact port of
the TensorFlow 2015-12-05 graph, the same network and weight file that torchmetrics' FID wraps.

The weight file ``weights-inception-2015-12-05-6726825d.pth`` is looked up in this order:
``--inception-weights FILE``, the environment variable ``LDM_INCEPTION_WEIGHTS``, and the torch
hub cache where torch-fidelity and torchmetrics keep it (``$TORCH_HOME/hub/checkpoints/``). It is
never downloaded behind the user's back: without it, :class:`InceptionWeightsMissing` says which
file, where it comes from and where to put it. No other network (e.g. torchvision's ImageNet
Inception, whose features differ) is ever used in its place.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import torch

from ldm.checkpoint import load_state_dict

__all__ = ["FID_DIMS", "INCEPTION_FILENAME", "INCEPTION_URL", "INCEPTION_WEIGHTS_ENV", "InceptionFeatures",
           "InceptionWeightsMissing", "find_inception_weights", "inception_cache_path"]

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
INCEPTION_WEIGHTS_ENV = "LDM_INCEPTION_WEIGHTS"
FID_DIMS = (64, 192, 768, 2048)  # the pooled feature layers of the FID network; 2048 is the paper's


class InceptionWeightsMissing(FileNotFoundError):
    """The FID Inception weight file is not where it was looked for."""


def inception_cache_path() -> Path:
    """Where torch-fidelity (and torchmetrics through it) caches the weights: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def _missing(looked: list[str]) -> InceptionWeightsMissing:
    cache = inception_cache_path()
    return InceptionWeightsMissing(
        f"the FID Inception weights {INCEPTION_FILENAME} were not found (looked at: {'; '.join(looked)}).\n"
        f"They are the TensorFlow FID Inception (2015-12-05) converted by torch-fidelity, published at\n"
        f"  {INCEPTION_URL}\n"
        f"Put the file in the torch hub cache, where torch-fidelity and torchmetrics also look:\n"
        f"  mkdir -p {cache.parent} && curl -L -o {cache} {INCEPTION_URL}\n"
        f"or pass --inception-weights FILE, or set {INCEPTION_WEIGHTS_ENV}=FILE.")


def find_inception_weights(path: Union[str, os.PathLike, None] = None) -> Path:
    """The weight file: ``path``, else ``$LDM_INCEPTION_WEIGHTS``, else the torch hub cache."""
    if path is not None:
        if not Path(path).is_file():
            raise _missing([f"--inception-weights {path} (no such file)"])
        return Path(path)
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        if not Path(env).is_file():
            raise _missing([f"{INCEPTION_WEIGHTS_ENV}={env} (no such file)"])
        return Path(env)
    cache = inception_cache_path()
    if cache.is_file():
        return cache
    raise _missing([f"{INCEPTION_WEIGHTS_ENV} (unset)", f"{cache} (absent)"])


class InceptionFeatures:
    """Pool features of dimension ``dims`` and the unbiased 1008-way logits (for the Inception
    Score) of the FID Inception network, for uint8 images of any size (resized to 299 inside,
    with TensorFlow 1.x's bilinear interpolation)."""

    is_inception = True

    def __init__(self, weights: Union[str, os.PathLike, None] = None, dims: int = 2048,
                 device: Union[str, torch.device] = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if dims not in FID_DIMS:
            raise ValueError(f"--fid-features must be one of {FID_DIMS}, got {dims}")
        path = find_inception_weights(weights)
        # Read with the loader that never executes pickled code, then hand torch-fidelity the
        # verified tensors (it would otherwise unpickle the file with weights_only=False).
        sd = load_state_dict(path)
        buffer = io.BytesIO()
        torch.save(sd, buffer)
        buffer.seek(0)
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", [str(dims), "logits_unbiased"],
                                              feature_extractor_weights_path=buffer)
        except RuntimeError as exc:  # load_state_dict is strict: a different network's file
            raise ValueError(f"{path}: not the FID Inception weight file {INCEPTION_FILENAME} ({exc})") from None
        self.net = net.to(device)
        self.device = torch.device(device)
        self.dims = dims
        self.path = path
        self.name = f"inception-v3-compat-{dims}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8:
            raise TypeError(f"the FID Inception takes uint8 images, got {images.dtype}")
        features, logits = self.net(images.to(self.device))
        return features, logits
