"""A small classifier of the synthetic shapes: the offline judge and feature extractor of the
synthetic setting.

The paper scores ImageNet samples with networks trained on real data (Inception for FID/IS, a
ResNet for class-conditional accuracy). The demo's synthetic data has no such network, and none
may be downloaded, so this module trains one: :class:`ShapesClassifier` predicts
``class_label`` of :mod:`ldm.data.synthetic` (the dominant shape, 8 classes) and returns
``(features, logits)``, the interface of :class:`ldm.eval.features.ModuleFeatures`. Scores from
its features are FID-*like* and are always labelled with the classifier's name, never as
Inception FID.

Files: ``classifier.safetensors`` (weights) and ``classifier.json`` (:class:`ClassifierConfig`:
sizes, classes, seed, validation accuracy, data fingerprint) in one directory; loading reads
JSON and safetensors only, nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ldm.checkpoint import atomic_path, load_state_dict, save_state_dict
from ldm.data.synthetic import SHAPES, SyntheticShapes, SyntheticShapesTrain, SyntheticShapesValidation

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "ClassifierConfig", "ClassifierMismatch", "ShapesClassifier",
           "classifier_features", "data_fingerprint", "evaluate", "load_classifier", "save_classifier",
           "train_classifier", "usable_classifier"]

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT = "ldm.eval.classifier/1"
_FINGERPRINT_IMAGES = 16  # validation images hashed into the data fingerprint


class ClassifierMismatch(ValueError):
    """A saved classifier was trained on other data (size, classes or generator) than it is used on."""


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ShapesClassifier(nn.Module):
    """A small VGG-style CNN: four 3x3 conv-BN-ReLU layers of widths w, 2w, 4w, 8w with 2x2
    max-pooling between them (32 -> 16 -> 8 -> 4 px at the demo size), global average pooling
    and one linear layer. One convolution per resolution keeps a training step cheap on a CPU.

    ``forward(x)`` takes images (B, 3, H, W) in [-1, 1] and returns ``(features, logits)``:
    the pooled activations (B, 8w) (the penultimate layer, ``feature_dims``) and the class
    logits (B, n_classes). Images of another size than ``size`` are resized to it first
    (bilinear, antialiased when shrinking), so samples of any resolution can be judged; the
    accuracy is documented at ``size`` only.
    """

    def __init__(self,
                 size: int = 32,       # image side in px the network is trained at
                 n_classes: int = 8,   # classes of the synthetic data's class_label
                 width: int = 24,      # channels of the first layer; features have 8 * width
                 ):
        super().__init__()
        if size < 8 or n_classes < 2 or width < 1:
            raise ValueError(f"need size >= 8, n_classes >= 2, width >= 1; got size={size}, n_classes={n_classes}, "
                             f"width={width}")
        self.size, self.n_classes, self.width = size, n_classes, width
        w = width
        self.body = nn.Sequential(_block(3, w), nn.MaxPool2d(2), _block(w, 2 * w), nn.MaxPool2d(2),
                                  _block(2 * w, 4 * w), nn.MaxPool2d(2), _block(4 * w, 8 * w))
        self.head = nn.Linear(8 * w, n_classes)

    @property
    def feature_dims(self) -> int:
        return 8 * self.width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ShapesClassifier expects RGB images (B, 3, H, W) in [-1, 1], got shape {tuple(x.shape)}")
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size)
        features = self.body(x).mean(dim=(2, 3))
        return features, self.head(features)


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild a classifier and to know what it was trained on."""

    size: int
    n_classes: int
    width: int
    feature_dims: int
    class_names: list[str]
    seed: int
    steps: int
    batch_size: int
    lr: float
    train_images: int          # training-stream items [0, train_images)
    val_images: int            # SyntheticShapesValidation items the accuracy is measured on
    val_accuracy: float
    data_fingerprint: str      # data_fingerprint(size, n_classes) at training time
    format: str = FORMAT

    @property
    def name(self) -> str:
        """How scores from this classifier are labelled."""
        return f"synthetic-shapes classifier {self.size}px ({self.val_accuracy:.1%} val. acc., " \
               f"data {self.data_fingerprint[:8]})"


def data_fingerprint(size: int, n_classes: int = len(SHAPES)) -> str:
    """A hash of the synthetic data a classifier applies to: the generator's parameters and the
    first validation images (8-bit) and labels, so a change of size, classes or rasterisation
    is detected."""
    data = SyntheticShapesValidation(size=size, n_classes=n_classes, length=_FINGERPRINT_IMAGES)
    h = hashlib.sha256(f"SyntheticShapes size={size} n_classes={n_classes}".encode())
    for i in range(len(data)):
        ex = data[i]
        h.update(np.round((ex["image"] + 1.0) * 127.5).astype(np.uint8).tobytes())
        h.update(f"{ex['class_label']}|{ex['caption']}".encode())
    return h.hexdigest()[:16]


def _images_labels(data: SyntheticShapes, desc: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.empty((len(data), 3, data.size, data.size), dtype=np.float32)
    labels = np.empty(len(data), dtype=np.int64)
    for i in tqdm(range(len(data)), desc=desc, unit="img", disable=not progress, leave=False):
        ex = data[i]
        images[i] = ex["image"].transpose(2, 0, 1)
        labels[i] = ex["class_label"]
    return torch.from_numpy(images), torch.from_numpy(labels)


@torch.no_grad()
def evaluate(model: ShapesClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy on (N, 3, H, W) images in [-1, 1]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size].to(device))[1]
        correct += int((logits.argmax(1).cpu() == labels[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(images), 1)


def train_classifier(size: int = 32,
                     steps: int = 800,
                     seed: int = 0,
                     batch_size: int = 64,
                     lr: float = 3e-3,
                     width: int = 24,
                     train_images: int = 8192,
                     val_images: int = 1000,
                     n_classes: int = len(SHAPES),
                     device: Union[str, torch.device] = "cpu",
                     progress: bool = True) -> tuple[ShapesClassifier, ClassifierConfig]:
    """Train a :class:`ShapesClassifier` on training-stream items [0, train_images) with random
    horizontal flips (every shape is mirror-symmetric, so the labels stay right), AdamW and a
    one-cycle learning rate; return it with its config and validation accuracy.

    Deterministic for a given seed on one machine (initialisation, batches and flips come from
    generators seeded by ``seed``; the data does not depend on it)."""
    if steps < 1 or batch_size < 1 or train_images < 1 or val_images < 1:
        raise ValueError(f"steps, batch_size, train_images and val_images must be >= 1, got {steps}, {batch_size}, "
                         f"{train_images}, {val_images}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = _images_labels(SyntheticShapesTrain(size=size, n_classes=n_classes, length=train_images),
                                      "classifier data", progress)
    x_val, y_val = _images_labels(SyntheticShapesValidation(size=size, n_classes=n_classes, length=val_images),
                                  "classifier validation data", progress)
    model = ShapesClassifier(size=size, n_classes=n_classes, width=width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    # One-cycle: a short warm-up, then cosine decay to zero, so the last steps settle the weights.
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda n: (n + 1) / warm if n < warm else 0.5 * (1 + math.cos(math.pi * (n - warm) / max(1, steps - warm))))
    model.train()
    order = torch.randperm(train_images, generator=gen)
    pos = 0
    with tqdm(range(steps), desc="classifier", unit="step", disable=not progress) as bar:
        for _ in bar:
            if pos + batch_size > train_images:
                order, pos = torch.randperm(train_images, generator=gen), 0
            idx = order[pos:pos + batch_size]
            pos += batch_size
            x, y = x_train[idx], y_train[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x.to(device))[1], y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    acc = evaluate(model, x_val, y_val)
    config = ClassifierConfig(size=size, n_classes=n_classes, width=width, feature_dims=model.feature_dims,
                              class_names=[SyntheticShapes(size=size, n_classes=n_classes, length=0).class_name(k)
                                           for k in range(n_classes)],
                              seed=seed, steps=steps, batch_size=batch_size, lr=lr, train_images=train_images,
                              val_images=val_images, val_accuracy=acc,
                              data_fingerprint=data_fingerprint(size, n_classes))
    return model, config


def save_classifier(model: ShapesClassifier, config: ClassifierConfig, out_dir: Union[str, os.PathLike]) -> Path:
    """Write ``classifier.safetensors`` and ``classifier.json`` into ``out_dir`` (each atomically);
    return the directory."""
    out = Path(out_dir)
    save_state_dict(out / WEIGHTS_FILE, model.state_dict())
    with atomic_path(out / CONFIG_FILE) as tmp:
        Path(tmp).write_text(json.dumps(asdict(config), indent=1) + "\n", encoding="utf-8")
    return out


def _read_config(path: Path) -> ClassifierConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable classifier config ({exc})") from None
    names = {f.name for f in fields(ClassifierConfig)}
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not a classifier config of ldm.eval.classifier (expected format {FORMAT!r})")
    missing = sorted(names - set(raw) - {"format"})
    if missing:
        raise ValueError(f"{path}: classifier config lacks {', '.join(missing)}")
    return ClassifierConfig(**{k: v for k, v in raw.items() if k in names})


def load_classifier(path: Union[str, os.PathLike], size: Optional[int] = None, check_data: bool = True,
                    device: Union[str, torch.device] = "cpu") -> tuple[ShapesClassifier, ClassifierConfig]:
    """Load a classifier written by :func:`save_classifier` (``path``: its directory or either
    file), in eval mode.

    ``size``: the image side of the data it will judge; a classifier trained at another size is
    refused. ``check_data``: recompute the data fingerprint and refuse the classifier if the
    synthetic data has changed since it was trained (its accuracy would no longer hold)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"classifier file not found: {p} (train one with "
                                    f"`python scripts/train_classifier.py --out {folder}`)")
    config = _read_config(cfg_path)
    if size is not None and size != config.size:
        raise ClassifierMismatch(f"{folder}: the classifier was trained on {config.size}px synthetic images, the data "
                                 f"to judge is {size}px; train one at that size "
                                 f"(`python scripts/train_classifier.py --size {size} --out DIR`)")
    if check_data:
        current = data_fingerprint(config.size, config.n_classes)
        if current != config.data_fingerprint:
            raise ClassifierMismatch(f"{folder}: the classifier was trained on synthetic data with fingerprint "
                                     f"{config.data_fingerprint}, the data now has {current} (ldm.data.synthetic "
                                     "changed); retrain it with scripts/train_classifier.py")
    model = ShapesClassifier(size=config.size, n_classes=config.n_classes, width=config.width)
    try:
        model.load_state_dict(load_state_dict(weights_path), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: weights do not match {cfg_path} ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), config


def usable_classifier(path: Union[str, os.PathLike], size: int) -> bool:
    """Whether ``path`` holds a classifier :func:`load_classifier` accepts for ``size`` px images of
    today's synthetic data (False: missing, trained at another size or on other data, or damaged),
    so callers can train one on first use and reuse it afterwards."""
    try:
        load_classifier(path, size=size)
    except (FileNotFoundError, ClassifierMismatch, ValueError):
        return False
    return True


def classifier_features(path: Union[str, os.PathLike], size: Optional[int] = None,
                        device: Optional[torch.device] = None) -> Any:
    """A saved classifier as a feature extractor for :mod:`ldm.eval.scoring` (uint8 images in,
    ``(features, logits)`` out), named so that its scores are never taken for Inception's."""
    from ldm.eval.features import ModuleFeatures

    model, config = load_classifier(path, size=size, device=device or "cpu")
    extractor = ModuleFeatures(model, name=config.name, device=device)
    extractor.dims = config.feature_dims
    return extractor
