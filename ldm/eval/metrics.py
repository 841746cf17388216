"""The paper's metrics on top of maintained implementations.

* FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to features, from
  torch-fidelity (``fid_statistics_to_metric``); statistics are computed here in float64.
* KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel over random
  subsets, from torch-fidelity.
* Inception Score (Salimans et al. 2016): exp E[KL(p(y|x) || p(y))] over splits, from torch-fidelity.
* Precision and recall (Kynkäänniemi et al. 2019): the share of generated samples inside the
  k-NN balls (k = 3) of the real features, and vice versa, from torch-fidelity.
* PSNR, SSIM (Wang et al. 2004; 11×11 Gaussian window, σ = 1.5): per image on 8-bit images with
  data range 255, from torchmetrics; LPIPS (Zhang et al. 2018): :class:`ldm.modules.losses.lpips.LPIPS`
  (VGG16, the network of the first-stage training loss). Each is a mean over images, with the
  standard deviation over images (as the paper's "24.4 ± 3.8").
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch

from ldm.checkpoint import atomic_path

__all__ = ["Statistics", "accuracy", "fid", "inception_score", "kid", "lpips_values", "paired_values",
           "precision_recall", "psnr_values", "ssim_values", "summary"]


@dataclass
class Statistics:
    """Gaussian statistics of one image set's features (what FID compares)."""

    mu: np.ndarray          # (D,) float64
    sigma: np.ndarray       # (D, D) float64
    count: int              # number of images
    fingerprint: str        # identifies the image set (see ldm.eval.images)
    extractor: str          # the network and layer the features come from
    dims: int

    @classmethod
    def from_features(cls, features: np.ndarray, fingerprint: str = "", extractor: str = "") -> "Statistics":
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"FID needs at least 2 feature vectors, got an array of shape {features.shape}")
        f = features.astype(np.float64)
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), count=len(f), fingerprint=fingerprint,
                   extractor=extractor, dims=f.shape[1])

    def save(self, path: Union[str, os.PathLike]) -> Path:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to the name
                np.savez(fh, mu=self.mu, sigma=self.sigma, count=np.int64(self.count),
                         fingerprint=np.str_(self.fingerprint), extractor=np.str_(self.extractor),
                         dims=np.int64(self.dims))
        return Path(path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Statistics":
        with np.load(path, allow_pickle=False) as z:
            missing = {"mu", "sigma", "count", "fingerprint", "extractor", "dims"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a statistics file of ldm.eval (missing {sorted(missing)})")
            return cls(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64), count=int(z["count"]),
                       fingerprint=str(z["fingerprint"]), extractor=str(z["extractor"]), dims=int(z["dims"]))

    @staticmethod
    def is_statistics_file(path: Union[str, os.PathLike]) -> bool:
        if not str(path).endswith(".npz") or not Path(path).is_file():
            return False
        with np.load(path, allow_pickle=False) as z:
            return "mu" in z.files and "sigma" in z.files


def fid(a: Statistics, b: Statistics) -> float:
    """||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    if a.dims != b.dims:
        raise ValueError(f"FID of features of different dimension: {a.dims} ({a.extractor}) vs {b.dims} "
                         f"({b.extractor})")
    if a.extractor and b.extractor and a.extractor != b.extractor:
        raise ValueError(f"FID of features of different networks: {a.extractor!r} vs {b.extractor!r}")
    return float(fid_statistics_to_metric({"mu": a.mu, "sigma": a.sigma}, {"mu": b.mu, "sigma": b.sigma},
                                          verbose=False)[KEY_METRIC_FID])


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² (cubic kernel) over ``subsets`` random subsets; the subset
    size is capped at the smaller set's size."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated")
    out = kid_features_to_metric(torch.from_numpy(real.astype(np.float64)), torch.from_numpy(fake.astype(np.float64)),
                                 kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) over ``splits`` splits of exp E_x[KL(p(y|x) || p(y))]; logits (N, K)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if len(logits) < splits:
        raise ValueError(f"the Inception Score uses {splits} splits and needs at least that many images, "
                         f"got {len(logits)}")
    out = isc_features_to_metric(torch.from_numpy(logits.astype(np.float64)), splits=splits, shuffle=True,
                                 rng_seed=seed)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii, k = 3 as in the
    paper: precision = share of generated samples within the k-NN ball of some real sample,
    recall = share of real samples within the k-NN ball of some generated sample."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, "
                         f"got {len(real)} real and {len(fake)} generated")
    out = prc_features_to_metric(torch.from_numpy(fake.astype(np.float32)), torch.from_numpy(real.astype(np.float32)),
                                 prc_neighborhood=k, save_cpu_ram=len(real) * len(fake) > 10 ** 8, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose arg-max class is their label (class-conditional samples)."""
    labels = np.asarray(labels)
    if len(labels) != len(logits):
        raise ValueError(f"{len(logits)} images but {len(labels)} labels")
    return float((logits.argmax(axis=1) == labels).mean())


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).double()


def psnr_values(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 (B, H, W, 3) images (data range 255)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(_nchw(fake), _nchw(real), data_range=255.0, reduction="none",
                                   dim=(1, 2, 3)).numpy()


def ssim_values(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """Per-image SSIM of uint8 (B, H, W, 3) images: 11×11 Gaussian window, σ = 1.5, data range 255,
    K1 = 0.01, K2 = 0.03, averaged over channels and the window positions inside the image.

    torchmetrics computes the SSIM map on a reflection-padded image and averages it over all H×W
    pixels; the reference implementation (Wang et al.; scikit-image) averages over the positions
    where the window lies inside the image only, so the map's 5-pixel border is cropped here."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if min(real.shape[1:3]) < 11:
        raise ValueError(f"SSIM's 11x11 window needs images of at least 11x11 px, got {real.shape[1]}x{real.shape[2]}")
    _, ssim_map = structural_similarity_index_measure(_nchw(fake), _nchw(real), gaussian_kernel=True, sigma=1.5,
                                                      kernel_size=11, data_range=255.0, reduction="none",
                                                      return_full_image=True)
    pad = 5  # (11 - 1) // 2
    return ssim_map[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3)).numpy()


def lpips_values(real: np.ndarray, fake: np.ndarray, net: torch.nn.Module) -> np.ndarray:
    """Per-image LPIPS distance of uint8 (B, H, W, 3) images with ``net`` (an ``LPIPS`` module)."""
    device = next(net.parameters()).device
    with torch.no_grad():
        a = (_nchw(real).float() / 127.5 - 1.0).to(device)
        b = (_nchw(fake).float() / 127.5 - 1.0).to(device)
        return net(a, b).flatten().double().cpu().numpy()


def paired_values(pairs: Iterable[tuple[np.ndarray, np.ndarray]], metrics: Iterable[str],
                  lpips_net: Optional[torch.nn.Module] = None) -> dict[str, np.ndarray]:
    """Per-image values of the paired metrics (``psnr``, ``ssim``, ``lpips``) over batches of
    (real, fake) uint8 arrays."""
    fns: dict[str, Any] = {"psnr": psnr_values, "ssim": ssim_values,
                           "lpips": lambda r, f: lpips_values(r, f, lpips_net)}
    names = [m for m in metrics if m in fns]
    values: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for real, fake in pairs:
        for m in names:
            values[m].append(np.atleast_1d(fns[m](real, fake)))
    return {m: np.concatenate(v) for m, v in values.items() if v}


def summary(values: np.ndarray) -> tuple[float, float]:
    """(mean, std) over images."""
    return float(np.mean(values)), float(np.std(values))
