"""Scores of models trained on the built-in synthetic shapes, judged by the synthetic classifier
(scripts/train_classifier.py, :mod:`ldm.eval.classifier`).

* :func:`class_sample_scores`: guided class samples (class of sample i = i mod 8) -> how often the
  classifier recognises their class, and an FID-like score of the classifier's features against
  real validation images (not Inception FID);
* :func:`reconstruction_scores`: PSNR and SSIM of a first stage's D(E(x)) on validation images;
* :func:`text_prompt_scores`: text-to-image samples of one prompt -> do they show the colours it
  names, and does the classifier see its first shape;
* :func:`mean_latent_response`: how far a text model's x_0 estimate moves in mean colour when the
  prompt changes, per timestep (what its samples' colours can follow).

The real-image side (features, statistics, the classifier's accuracy on them) depends only on the
classifier, the image size and the number of images; it is computed once per process and reused,
so scoring many checkpoints pays for it once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = ["ClassSampleScores", "PromptTargets", "ReconstructionScores", "RealReference", "TextSampleScores",
           "class_sample_scores", "colour_coverage", "mean_latent_response", "prompt_targets", "real_reference",
           "reconstruction_scores", "shows_colours", "text_prompt_scores", "text_sample_scores"]

SIZE = 32          # image side of the synthetic data used by the demo and the small reproduction
SAMPLE_BATCH = 64  # samples drawn per sampler call
FEATURE_BATCH = 100


@dataclass
class RealReference:
    """What the samples are compared with: real validation images under the classifier."""

    statistics: Any          # ldm.eval.metrics.Statistics of the classifier's features
    accuracy: float          # the classifier's accuracy on these images, in [0, 1]
    count: int
    extractor: Any           # the classifier as a feature extractor


@dataclass
class ClassSampleScores:
    accuracy: float          # fraction of samples the classifier assigns to their class
    fid_like: float          # Frechet distance of classifier features, samples vs real images
    real_accuracy: float     # the classifier's accuracy on the real images (the ceiling)
    samples: np.ndarray      # uint8 (N, H, W, 3)
    labels: np.ndarray       # (N,) class of each sample
    extractor: str           # the classifier's name (never Inception)
    feature_dims: int
    n_real: int

    @property
    def relative_accuracy(self) -> float:
        return self.accuracy / max(self.real_accuracy, 1e-12)


@dataclass
class ReconstructionScores:
    psnr: float
    psnr_std: float
    ssim: float
    ssim_std: float
    n: int
    first_inputs: np.ndarray  # uint8 (<=8, H, W, 3), for a grid
    first_outputs: np.ndarray
    # With a classifier: how often it recognises the reconstructions' class, and the same images'
    # (the ceiling for samples decoded by this first stage, whatever the diffusion model).
    accuracy: Optional[float] = None
    real_accuracy: Optional[float] = None

    @property
    def relative_accuracy(self) -> Optional[float]:
        if self.accuracy is None or self.real_accuracy is None:
            return None
        return self.accuracy / max(self.real_accuracy, 1e-12)


def _stack_images(data: Any, indices: range) -> Any:
    import torch

    return torch.from_numpy(np.stack([data[i]["image"] for i in indices])).permute(0, 3, 1, 2)


@lru_cache(maxsize=8)
def _real_reference(classifier_folder: str, n_real: int, size: int) -> RealReference:
    from ldm.data.synthetic import SyntheticShapesValidation
    from ldm.eval.classifier import classifier_features
    from ldm.eval.features import extract_features
    from ldm.eval.metrics import Statistics, accuracy
    from ldm.inference import to_uint8

    extractor = classifier_features(classifier_folder, size=size)
    data = SyntheticShapesValidation(size=size, length=n_real)
    real = [(to_uint8(_stack_images(data, range(i, min(i + FEATURE_BATCH, len(data))))),
             np.array([data[j]["class_label"] for j in range(i, min(i + FEATURE_BATCH, len(data)))]))
            for i in range(0, len(data), FEATURE_BATCH)]
    feats = extract_features(extractor, (r for r, _ in real), total=len(data), desc="real images")
    real_acc = accuracy(feats.logits, np.concatenate([lab for _, lab in real]))
    return RealReference(Statistics.from_features(feats.features, extractor=extractor.name), float(real_acc),
                         len(data), extractor)


def real_reference(classifier_folder: Union[str, os.PathLike], n_real: int = 1000, size: int = SIZE) -> RealReference:
    """The real validation images' classifier statistics and accuracy (cached per process)."""
    if n_real < 2:
        raise ValueError(f"n_real={n_real}: the FID-like score needs at least 2 real images")
    return _real_reference(str(Path(classifier_folder).resolve()), int(n_real), int(size))


def class_sample_scores(model: Any, classifier_folder: Union[str, os.PathLike], n_samples: int,
                        sampler: str = "ddim", steps: int = 50, scale: float = 3.0, seed: int = 0,
                        n_real: int = 1000, size: int = SIZE, progress: bool = True,
                        guide: Any = None, eta: float = 0.0, precision: str = "fp32") -> ClassSampleScores:
    """Sample ``n_samples`` class-conditional images (class i mod n_classes, noise seeded by (seed, i),
    ``ldm.eval.protocols.generation_batches``; ``guide``: a ``GuideModel`` for autoguidance; ``eta``:
    DDIM's stochasticity, ddim only; ``precision``: the networks' autocast, fp32, fp16 or bf16) and judge
    them with the classifier in ``classifier_folder``."""
    from ldm.eval.features import extract_features
    from ldm.eval.metrics import Statistics, accuracy, fid
    from ldm.eval.protocols import generation_batches
    from ldm.inference import SamplingOptions

    if n_samples < 2:
        raise ValueError(f"n_samples={n_samples}: the FID-like score needs at least 2 samples")
    ref = real_reference(classifier_folder, n_real, size)
    opts = SamplingOptions(sampler=sampler, steps=steps, scale=scale, eta=eta, progress=False, precision=precision)
    make = generation_batches(model, opts, seed, guide=guide)
    samples, labels = [], []
    for start in range(0, n_samples, SAMPLE_BATCH):
        images, lab = make(np.arange(start, min(start + SAMPLE_BATCH, n_samples)))
        samples.append(images)
        labels.append(lab)
        if progress:
            print(f"    class samples: {start + len(images)}/{n_samples}", flush=True)
    samples_u8, labels_np = np.concatenate(samples), np.concatenate(labels)
    extractor = ref.extractor
    fake = extract_features(extractor, (samples_u8[i:i + FEATURE_BATCH] for i in range(0, len(samples_u8),
                                                                                     FEATURE_BATCH)),
                            total=len(samples_u8), desc="class samples", progress=progress)
    fid_like = fid(ref.statistics, Statistics.from_features(fake.features, extractor=extractor.name))
    return ClassSampleScores(accuracy=float(accuracy(fake.logits, labels_np)), fid_like=float(fid_like),
                             real_accuracy=ref.accuracy, samples=samples_u8, labels=labels_np,
                             extractor=extractor.name, feature_dims=int(fake.features.shape[1]), n_real=ref.count)


def reconstruction_scores(autoencoder: Any, n: int, size: int = SIZE, batch: int = 100,
                          classifier_folder: Optional[Union[str, os.PathLike]] = None) -> ReconstructionScores:
    """PSNR and SSIM (8-bit, per image; mean and std) of D(E(x)) on ``n`` synthetic validation images
    (posterior mode for KL autoencoders, the quantised code for VQ ones); with ``classifier_folder``,
    also how often that classifier recognises the reconstructions' class against the originals'."""
    import torch

    from ldm.data.synthetic import SyntheticShapesValidation
    from ldm.eval.features import extract_features
    from ldm.eval.metrics import accuracy, psnr_values, ssim_values
    from ldm.eval.protocols import reconstruction_batches

    data = SyntheticShapesValidation(size=size, length=n)
    make = reconstruction_batches(autoencoder, data, torch.device("cpu"))
    psnr, ssim, recs, first = [], [], [], None
    for start in range(0, n, batch):
        rec, ref, _ = make(np.arange(start, min(start + batch, n)))
        psnr.append(psnr_values(ref, rec))
        ssim.append(ssim_values(ref, rec))
        recs.append(rec)
        first = first if first is not None else (ref[:8], rec[:8])
    p, s = np.concatenate(psnr), np.concatenate(ssim)
    scores = ReconstructionScores(float(p.mean()), float(p.std()), float(s.mean()), float(s.std()), n,
                                  first[0], first[1])
    if classifier_folder is not None:
        ref = real_reference(classifier_folder, n, size)  # the same n validation images
        feats = extract_features(ref.extractor, iter(recs), total=n, desc="reconstructions", progress=False)
        labels = np.array([data[i]["class_label"] for i in range(n)])
        scores.accuracy, scores.real_accuracy = float(accuracy(feats.logits, labels)), ref.accuracy
    return scores


# ---- text samples: does an image show the prompt's colours and its dominant shape? ----

COLOUR_TOLERANCE = 60.0  # RGB distance within which a pixel counts as a palette colour (objects jitter by 12)
MIN_COVERAGE = 0.02      # share of pixels a colour needs to count as shown (a small object covers >= 4 %)


def colour_coverage(images: np.ndarray, colours: Any, tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
    """(N, len(colours)): the share of each image's pixels whose nearest colour of the synthetic
    palette (ldm.data.synthetic.COLOURS) is that colour, within ``tolerance`` (RGB distance)."""
    from ldm.data.synthetic import COLOUR_NAMES, COLOURS

    unknown = [c for c in colours if c not in COLOURS]
    if unknown:
        raise ValueError(f"unknown colour(s) {unknown}; the synthetic palette has {', '.join(COLOUR_NAMES)}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got shape {images.shape}")
    palette = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
    dist = np.linalg.norm(images.astype(np.float32)[..., None, :] - palette, axis=-1)  # (N, H, W, P)
    nearest, within = dist.argmin(-1), dist.min(-1) <= tolerance
    return np.stack([((nearest == COLOUR_NAMES.index(c)) & within).mean(axis=(1, 2)) for c in colours], axis=1)


def shows_colours(images: np.ndarray, colours: Any, min_coverage: float = MIN_COVERAGE) -> np.ndarray:
    """(N,) bool: every one of ``colours`` covers at least ``min_coverage`` of the image."""
    return (colour_coverage(images, colours) >= min_coverage).all(axis=1)


@dataclass
class TextSampleScores:
    colours: tuple[str, ...]
    shape: str                  # the prompt's first (dominant: drawn largest) shape
    shows_colours: float        # share of samples showing every prompt colour
    real_shows_colours: float   # the same on real validation images of any caption (the chance rate)
    shape_accuracy: float       # share of samples the classifier assigns to the prompt's first shape
    n: int
    n_real: int


def text_sample_scores(samples: np.ndarray, prompt_colours: Any, prompt_shape: str,
                       classifier_folder: Union[str, os.PathLike], n_real: int = 1000,
                       size: int = SIZE) -> TextSampleScores:
    """Judge text-to-image samples of one prompt: do they show its colours (against how often real
    scenes do by chance), and does the classifier see its first shape, which the synthetic captions
    always name for the largest object (chance 1/8)?"""
    from ldm.data.synthetic import SHAPES, SyntheticShapesValidation
    from ldm.eval.features import extract_features
    from ldm.inference import to_uint8

    if prompt_shape not in SHAPES:
        raise ValueError(f"unknown shape {prompt_shape!r}; the synthetic shapes are {', '.join(SHAPES)}")
    ref = real_reference(classifier_folder, n_real, size)
    data = SyntheticShapesValidation(size=size, length=n_real)
    real_hits = [shows_colours(to_uint8(_stack_images(data, range(i, min(i + FEATURE_BATCH, n_real)))), prompt_colours)
                 for i in range(0, n_real, FEATURE_BATCH)]
    feats = extract_features(ref.extractor, iter([samples]), total=len(samples), desc="text samples", progress=False)
    return TextSampleScores(colours=tuple(prompt_colours), shape=prompt_shape,
                            shows_colours=float(shows_colours(samples, prompt_colours).mean()),
                            real_shows_colours=float(np.concatenate(real_hits).mean()),
                            shape_accuracy=float((feats.logits.argmax(1) == SHAPES.index(prompt_shape)).mean()),
                            n=len(samples), n_real=n_real)


@dataclass(frozen=True)
class PromptTargets:
    text: str
    colours: tuple[str, ...]  # the palette colours it names, in order, each once
    shape: str                # its first shape: synthetic captions name the largest object first


def prompt_targets(prompt: str) -> PromptTargets:
    """What a prompt in the synthetic captions' words asks for: its colours and its first shape."""
    from ldm.data.synthetic import COLOUR_NAMES, SHAPES

    words = prompt.lower().split()
    colours = tuple(dict.fromkeys(w for w in words if w in COLOUR_NAMES))
    shapes = [w for w in words if w in SHAPES]
    if not shapes:
        raise ValueError(f"prompt {prompt!r} names no shape of the synthetic data ({', '.join(SHAPES)})")
    if not colours:
        raise ValueError(f"prompt {prompt!r} names no colour of the synthetic palette ({', '.join(COLOUR_NAMES)})")
    return PromptTargets(prompt, colours, shapes[0])


def text_prompt_scores(model: Any, classifier_folder: Union[str, os.PathLike], prompt: str, n_samples: int,
                       sampler: str = "unipc", steps: int = 20, scale: float = 3.0, seed: int = 0,
                       n_real: int = 1000, size: int = SIZE, guide: Any = None,
                       compose: Any = None) -> tuple[TextSampleScores, np.ndarray]:
    """Sample ``n_samples`` images of ``prompt`` from a text-conditioned model (noise of sample i
    seeded by (seed, i), ``ldm.eval.protocols.generation_batches``; ``guide``: an
    ``ldm.inference.GuideModel`` to autoguide them; ``compose``: an ``ldm.inference.ComposedModel``
    whose guidance is added) and judge them with :func:`text_sample_scores`; returns the scores and
    the uint8 samples."""
    from ldm.eval.protocols import generation_batches
    from ldm.inference import SamplingOptions

    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: need at least one sample")
    targets = prompt_targets(prompt)
    make = generation_batches(model, SamplingOptions(sampler=sampler, steps=steps, scale=scale, progress=False), seed,
                              captions=[prompt], guide=guide, compose=compose)
    samples = np.concatenate([make(np.arange(start, min(start + SAMPLE_BATCH, n_samples)))[0]
                              for start in range(0, n_samples, SAMPLE_BATCH)])
    return text_sample_scores(samples, targets.colours, targets.shape, classifier_folder, n_real, size), samples


def mean_latent_response(model: Any, prompt_a: str, prompt_b: str, timesteps: Any = (900, 700, 500, 300),
                         n: int = 32, seed: int = 0, size: int = SIZE) -> dict[int, float]:
    """For each timestep t: the latents z_0 (posterior mode) of ``n`` synthetic validation images are noised to z_t
    (noise seeded by ``seed``), the model estimates z_0 from z_t under either prompt, and the
    per-channel spatial means of the two estimates are compared. Returns the mean L2 distance of
    those mean vectors, in units of the spread (RMS distance from their average) of the real
    latents' mean vectors: 1 means the prompt moves the estimated mean colour as far as images
    differ in it. An ε-model that ignores colour words at the noisy timesteps, where mean colour
    is decided, draws its colours from the starting noise."""
    import torch

    from ldm.data.synthetic import SyntheticShapesValidation
    from ldm.models.diffusion.parameterization import model_output_to_x0

    if n < 2:
        raise ValueError(f"n={n}: the spread of the latents' means needs at least 2 images")
    steps = [int(t) for t in timesteps]
    bad = [t for t in steps if not 0 <= t < model.num_timesteps]
    if bad:
        raise ValueError(f"timesteps {bad} outside [0, {model.num_timesteps})")
    device = model.device
    with torch.no_grad():
        images = _stack_images(SyntheticShapesValidation(size=size, length=n), range(n)).to(device)
        z0 = model.first_stage.encode(images, sample=False)  # posterior mode: the same z_0 every call
        means = z0.mean(dim=(2, 3))
        spread = float((means - means.mean(0)).pow(2).sum(1).mean().sqrt())
        cond = model.get_learned_conditioning([prompt_a, prompt_b])
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for t in steps:
            tt = torch.full((n,), t, device=device, dtype=torch.long)
            zt = model.q_sample(z0, tt, torch.randn(z0.shape, generator=gen).to(device))
            est = [model_output_to_x0(model, model.parameterization, zt, tt,
                                      model.apply_model(zt, tt, c[None].expand(n, *c.shape))).mean(dim=(2, 3))
                   for c in cond]
            out[t] = float((est[0] - est[1]).norm(dim=1).mean()) / max(spread, 1e-12)
    return out
