"""The demo's figures (scripts/demo.py): what its models reached on the synthetic shapes, measured
with :mod:`ldm.eval.synthetic_scores` and returned as report :class:`~ldm.eval.html_report.Figure` s.

* :func:`autoencoder_figures`: PSNR of D(E(x)) on validation images, and how often the classifier
  recognises the reconstructions (the ceiling of any decoded sample);
* :func:`class_figures`: guided (optionally autoguided) class samples recognised as their class,
  relative to real images, and an FID-like score of the classifier's features (not Inception FID);
* :func:`text_figures`: whether each prompt's samples show its colours and its first shape;
* :class:`PhaseTimer`: the demo's wall time by phase, printed and reported.

The issue-level targets are :class:`Targets`; :data:`FULL` and :data:`FAST` size the measurements.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ldm.eval.html_report import Figure

__all__ = ["FAST", "FULL", "SEED", "SIZE", "TEXT_PROMPTS", "PhaseTimer", "Prompt", "Sizes", "Targets",
           "autoencoder_figures", "class_figures", "text_figures", "uint8_to_tensor"]

SIZE = 32  # image side of the demo's synthetic data (configs/demo/*.yaml)
SEED = 0   # noise of the class samples; also the judge's training seed (scripts/train_classifier.py's default)


class Targets(NamedTuple):
    psnr_db: float = 28.0          # autoencoder reconstructions, mean per-image PSNR (8-bit)
    relative_accuracy: float = 0.9  # class samples recognised / real validation images recognised


class Sizes(NamedTuple):
    real_images: int     # validation images: reconstructions, the classifier's real accuracy, FID-like reference
    class_samples: int   # guided class samples (class i mod 8), sampled with the demo's class settings
    class_steps: int     # DDIM steps of those samples


class Prompt(NamedTuple):
    text: str
    colours: tuple[str, ...]  # the colours it names
    shape: str                # its first shape: synthetic captions name the largest object first


# The first prompt names no background, which every synthetic caption does ("... on a <colour>
# background"); the second asks for the same colours and shape in the captions' own words.
TEXT_PROMPTS = (Prompt("a red circle and a blue square", ("red", "blue"), "circle"),
                Prompt("a red circle on a blue background", ("red", "blue"), "circle"))

FULL = Sizes(real_images=1000, class_samples=256, class_steps=20)
FAST = Sizes(real_images=64, class_samples=16, class_steps=10)


def uint8_to_tensor(images: "np.ndarray") -> "torch.Tensor":
    """(N, H, W, 3) uint8 images -> (N, 3, H, W) floats in [-1, 1], as the grids and models take them."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def autoencoder_figures(run_dir: Path, n: int, grid: Path, classifier: Optional[Path] = None,
                        size: int = SIZE) -> list["Figure"]:
    """Mean per-image PSNR of D(E(x)) (posterior mode) on ``n`` synthetic validation images and, with
    the classifier, how often it recognises the reconstructions' class relative to the originals':
    the ceiling for any sample this autoencoder decodes. Writes a grid of the first 8 inputs (top)
    and reconstructions (bottom)."""
    import numpy as np

    from ldm.eval.html_report import Figure
    from ldm.eval.synthetic_scores import reconstruction_scores
    from ldm.inference import load_run, save_grid

    r = reconstruction_scores(load_run(run_dir, device="cpu"), n, size=size, classifier_folder=classifier)
    save_grid(uint8_to_tensor(np.concatenate([r.first_inputs, r.first_outputs])), grid, nrow=len(r.first_inputs))
    figures = [Figure(f"Autoencoder reconstructions: PSNR on {n} synthetic validation images", r.psnr, unit="dB",
                      target=Targets().psnr_db,
                      note=f"mean of per-image PSNR of 8-bit images (std {r.psnr_std:.2f} dB), "
                           "ldm.eval.synthetic_scores.reconstruction_scores")]
    if r.relative_accuracy is not None:
        figures.append(Figure("Reconstructions recognised as their class, relative to the originals",
                              100 * r.relative_accuracy, unit="%", digits=1,
                              note=f"the classifier on D(E(x)): {100 * r.accuracy:.1f} %, on x: "
                                   f"{100 * r.real_accuracy:.1f} %; the ceiling for decoded samples"))
    return figures


def class_figures(run_dir: Path, classifier: Path, sizes: Sizes, grid: Path, scale: float,
                  guide: Optional[Path] = None, guide_weight: float = 0.0, size: int = SIZE,
                  precision: str = "fp32") -> list["Figure"]:
    """How often guided class samples of the run are recognised as their class by the classifier,
    relative to real validation images, and an FID-like score of the classifier's features. With
    ``guide`` (a weaker checkpoint of the same task, e.g. the run's half-way snapshot) and a positive
    ``guide_weight`` the samples are autoguided by it; ``precision`` is the sampling's autocast (bf16 for
    a model trained in bf16-mixed). Writes the first 64 samples as a grid whose column k is class k."""
    from ldm.eval.html_report import Figure
    from ldm.eval.synthetic_scores import class_sample_scores
    from ldm.inference import GuideModel, load_run, save_grid

    if (guide is None) != (not guide_weight):
        raise ValueError(f"class_figures: a guide model needs a positive guide weight and the reverse "
                         f"(guide={guide}, guide_weight={guide_weight:g})")
    model = load_run(run_dir, device="cpu")
    guided = GuideModel(load_run(guide, device="cpu"), guide_weight) if guide is not None else None
    scores = class_sample_scores(model, classifier, sizes.class_samples, sampler="ddim", steps=sizes.class_steps,
                                 scale=scale, seed=SEED, n_real=sizes.real_images, size=size, guide=guided,
                                 precision=precision)
    save_grid(uint8_to_tensor(scores.samples[:64]), grid, nrow=8)  # column k: class k
    how = f"{sizes.class_samples} samples (class i mod 8), DDIM {sizes.class_steps} steps, guidance scale {scale:g}"
    if guide is not None:
        how += f", autoguidance weight {guide_weight:g} by {Path(guide).name}"
    how += f", {precision} autocast" if precision != "fp32" else ""
    return [
        Figure(f"Classifier accuracy on {scores.n_real} real validation images", 100 * scores.real_accuracy,
               unit="%", digits=1, note=scores.extractor),
        Figure("Guided class samples recognised as their class", 100 * scores.accuracy, unit="%", digits=1, note=how),
        Figure("Class samples recognised, relative to real images", 100 * scores.relative_accuracy, unit="%",
               digits=1, target=100 * Targets().relative_accuracy, note="sample accuracy / real-image accuracy"),
        Figure("FID-like score of the classifier's features (not Inception FID)", scores.fid_like, digits=2,
               note=f"Frechet distance of {scores.feature_dims}-d classifier features, samples vs "
                    f"{scores.n_real} validation images; lower is better, only comparable between runs of this demo"),
    ]


def text_figures(samples_dir: Path, classifier: Path, n_real: int, prompts: Sequence[Prompt] = TEXT_PROMPTS,
                 size: int = SIZE) -> list["Figure"]:
    """Whether the text model's samples of each prompt (PNGs in ``samples_dir/<safe_name(prompt)>/``,
    as txt2img.py writes them) show its colours and its first shape."""
    import numpy as np
    from PIL import Image

    from ldm.eval.html_report import Figure
    from ldm.eval.synthetic_scores import text_sample_scores
    from ldm.inference.images import safe_name

    figures = []
    for prompt in prompts:
        folder = Path(samples_dir) / safe_name(prompt.text)
        files = sorted(folder.glob("*.png"))
        if not files:
            raise SystemExit(f"demo: no text samples under {folder}")
        samples = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        t = text_sample_scores(samples, prompt.colours, prompt.shape, classifier, n_real=n_real, size=size)
        colours = " and ".join(t.colours)
        figures += [
            Figure(f"Text samples showing {colours} ('{prompt.text}')", 100 * t.shows_colours, unit="%", digits=1,
                   note=f"{t.n} samples; each colour on at least 2 % of the pixels; real scenes of any caption: "
                        f"{100 * t.real_shows_colours:.1f} % ({t.n_real} validation images)"),
            Figure(f"Text samples whose largest shape the classifier calls a {t.shape} ('{prompt.text}')",
                   100 * t.shape_accuracy, unit="%", digits=1,
                   note="the caption names the largest object first; chance 12.5 %"),
        ]
    return figures


class PhaseTimer:
    """Wall time of the demo's phases, in the order they ran; ``clock`` is injectable for tests."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start = clock()
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = self.clock()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + self.clock() - start

    def summary(self) -> str:
        """``874 s in all (autoencoder 99 s, ...)``: the whole time since the timer started, then each phase."""
        parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.phases.items())
        return f"{self.clock() - self.start:.0f} s in all" + (f" ({parts})" if parts else "")
