"""Representation alignment (REPA; Yu et al. 2025, "Representation Alignment for Generation:
Training Diffusion Transformers Is Easier Than You Think", ICLR 2025).

A denoiser has to learn what an image shows before its conditioning can tell it what to draw, and
it learns that slowly from the denoising loss alone. REPA adds a term that pulls a projection of
one of its hidden feature maps, computed from the noisy input z_t, towards the features that a
frozen encoder ("teacher") computes from the clean image x:

    L = L_diffusion - λ · mean_{b, i, j} cos(h_φ(f_θ(z_t, t, c))[b, :, i, j], e(x)[b, :, i, j])

f_θ: the output of one UNet block (``block``); h_φ: a small MLP applied at every position (1x1
convolutions), trained with the denoiser and unused by sampling; e: the teacher, whose feature map
is average-pooled (or interpolated) to f_θ's size. The paper aligns an early block of a DiT with
DINOv2 features at λ = 0.5. The term is added in training only; validation losses stay the plain
diffusion loss, so they compare with runs without it.

With ``detach_condition`` the UNet's blocks up to the aligned one (in forward order) see the
conditioning detached, so that the term cannot train the conditioning encoder (a text encoder
learned with the UNet would otherwise be pulled towards encoding what the teacher sees); the
encoder then learns from the later blocks' cross-attention only.

The teacher is a module mapping images in [-1, 1] to a feature map and naming its channels in
``out_channels``. :class:`ClassifierTeacher` is the first blocks of a synthetic-shapes classifier
(:mod:`ldm.eval.classifier`): the demo's teacher, trained by ``scripts/train_classifier.py`` with
another seed than the classifier that judges the samples. The teacher's weights are part of the
model's state dict (frozen), so a run loads without the teacher's files.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ldm.config.errors import ConfigError
from ldm.data import latent_cache

__all__ = ["ALIGNMENT_KEYS", "ClassifierTeacher", "RepresentationAlignment", "add_term", "alignment_loss",
           "block_channels", "capture", "make_alignment"]


class ClassifierTeacher(nn.Module):
    """The first ``layers`` conv blocks of a :class:`ldm.eval.classifier.ShapesClassifier`, frozen
    and always in eval mode (its BatchNorm uses the running statistics).

    Feature maps per ``layers`` at the classifier's size s: 1: s px, w channels; 2: s/2, 2w;
    3: s/4, 4w; 4: s/8, 8w (w = ``width``). ``ckpt_path``: the classifier's folder (or one of its
    files); its width must equal ``width``. None builds the architecture only, for weights that
    come from a checkpoint of the diffusion model (loading a run drops every ``ckpt_path``);
    :attr:`loaded` says whether any weights arrived, and training refuses a teacher without.
    """

    def __init__(self,
                 width: int = 24,                     # the classifier's first-layer channels
                 layers: int = 3,                     # conv blocks used, 1-4
                 size: int = 32,                      # image side the classifier was trained at
                 ckpt_path: Optional[str] = None,     # classifier folder (scripts/train_classifier.py --out)
                 ):
        super().__init__()
        from ldm.eval.classifier import ShapesClassifier

        if not 1 <= layers <= 4:
            raise ConfigError("layers", f"must be 1 to 4 (the classifier's conv blocks), got {layers}")
        full = ShapesClassifier(size=size, width=width)
        self.size, self.width, self.layers = size, width, layers
        self.body = full.body[:2 * layers - 1]  # block, pool, block, pool, ...: ends on a block
        self.out_channels = width * 2 ** (layers - 1)
        # Persistent, so that a checkpoint says whether its teacher had trained weights.
        self.register_buffer("loaded", torch.tensor(False))
        if ckpt_path is not None:
            self.load_classifier(ckpt_path)
        self.requires_grad_(False)
        super().train(False)

    def load_classifier(self, path: Union[str, os.PathLike]) -> None:
        from ldm.eval.classifier import load_classifier

        try:
            model, config = load_classifier(path, size=self.size)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError("ckpt_path", f"teacher classifier: {exc}") from None
        if config.width != self.width:
            raise ConfigError("width", f"is {self.width}, but the classifier in {path} has width {config.width}")
        self.body.load_state_dict(model.body[:len(self.body)].state_dict())
        self.loaded.fill_(True)

    def train(self, mode: bool = True) -> "ClassifierTeacher":
        return super().train(False)  # frozen: BatchNorm keeps its running statistics

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"the teacher classifier was trained on {self.size}px images, got {tuple(x.shape[-2:])}")
        return self.body(x)


def blocks_up_to(unet: nn.Module, block: str) -> list[nn.Module]:
    """The UNet's top-level blocks (input_blocks.i, middle_block, output_blocks.j, in forward order)
    up to the one that is or holds ``block``."""
    order = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    target = unet.get_submodule(block)
    for i, b in enumerate(order):
        if b is target or any(m is target for m in b.modules()):
            return order[:i + 1]
    raise ValueError(f"{block!r} is not inside the UNet's input, middle or output blocks")


def _detach_context(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a UNet block called as block(h, emb, context): the context detached."""
    if len(args) < 3 or args[2] is None:
        return args
    ctx = args[2]
    ctx = [c.detach() for c in ctx] if isinstance(ctx, (list, tuple)) else ctx.detach()
    return (*args[:2], ctx, *args[3:])


def block_channels(block: nn.Module) -> int:
    """Channels of a UNet block's output: those of its last layer that names them."""
    layers = list(block.children()) or [block]
    for layer in reversed(layers):
        for attr in ("out_channels", "in_channels"):  # SpatialTransformer keeps its input's channels
            if isinstance(getattr(layer, attr, None), int):
                return int(getattr(layer, attr))
    raise ValueError(f"cannot tell the output channels of {type(block).__name__}")


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over batch and positions, the target pooled to the projection's size."""
    if target.shape[-2:] != projected.shape[-2:]:
        if target.shape[-1] >= projected.shape[-1]:
            target = F.adaptive_avg_pool2d(target, projected.shape[-2:])
        else:
            target = F.interpolate(target, size=projected.shape[-2:], mode="bilinear", align_corners=False)
    return F.cosine_similarity(projected, target.to(projected.dtype), dim=1).mean()


class RepresentationAlignment(nn.Module):
    """REPA's teacher, projector and weight for one UNet block (see the module docstring)."""

    def __init__(self, unet: nn.Module, teacher_config: Mapping[str, Any], block: str = "middle_block",
                 weight: float = 0.5, hidden: int = 256, detach_condition: bool = False,
                 path: str = "representation_alignment"):
        super().__init__()
        from ldm.util import instantiate_from_config

        try:
            target_block = unet.get_submodule(block)
        except AttributeError:
            names = [n for n, _ in unet.named_children()]
            raise ConfigError(f"{path}.block", f"{block!r} is not a module of the UNet (top-level modules: "
                                               f"{', '.join(names)}; nested ones as e.g. input_blocks.3)") from None
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"{path}.weight", f"must be a number > 0, got {weight!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"{path}.hidden", f"must be an integer >= 1, got {hidden!r}")
        self.weight = float(weight)
        self.teacher = instantiate_from_config(teacher_config, path=f"{path}.teacher_config")
        out = getattr(self.teacher, "out_channels", None)
        if not isinstance(out, int):
            raise ConfigError(f"{path}.teacher_config", "the teacher must name its feature channels in out_channels")
        self.projector = nn.Sequential(nn.Conv2d(block_channels(target_block), hidden, 1), nn.SiLU(),
                                       nn.Conv2d(hidden, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, out, 1))
        self._target_block = [target_block]  # a list: not a second registration of the UNet's module
        if not isinstance(detach_condition, bool):
            raise ConfigError(f"{path}.detach_condition", f"must be true or false, got {detach_condition!r}")
        self._shielded = blocks_up_to(unet, block) if detach_condition else []

    def check_teacher(self) -> None:
        """Refuse to train against a teacher that never received weights."""
        if not bool(getattr(self.teacher, "loaded", True)):
            raise ConfigError("model.params.representation_alignment.teacher_config.params.ckpt_path",
                              "the teacher has no weights: set ckpt_path to a classifier trained by "
                              "scripts/train_classifier.py (use another --seed than the classifier that judges "
                              "the samples)")

    def parameters_to_train(self) -> list[nn.Parameter]:
        return list(self.projector.parameters())

    def teacher_features(self, batch: Mapping, images: torch.Tensor) -> torch.Tensor:
        """e(x) of the batch's clean ``images``; a latent-cache batch has none to give."""
        if latent_cache.cached_latent(batch) is not None:
            raise ValueError("representation_alignment needs the images: the teacher sees the clean image, and a "
                             "latent-cache batch holds latents only (train without the cache)")
        self.check_teacher()
        return self.teacher(images)

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        """Record the block's output of the forward passes inside the block."""
        found: dict[str, torch.Tensor] = {}
        handles = [self._target_block[0].register_forward_hook(lambda m, i, o: found.__setitem__("h", o))]
        handles += [b.register_forward_pre_hook(_detach_context) for b in self._shielded]
        try:
            yield found
        finally:
            for handle in handles:
                handle.remove()

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """-cos similarity (to be weighted by ``weight`` and added to the diffusion loss)."""
        return -alignment_loss(self.projector(hidden), target)


def capture(alignment: Optional[RepresentationAlignment], target: Optional[torch.Tensor]):
    """Around the denoiser's forward pass: records the aligned block's output when there is a ``target``."""
    return alignment.capture() if target is not None else contextlib.nullcontext({})


def add_term(alignment: Optional[RepresentationAlignment], hidden: Mapping[str, torch.Tensor],
             target: Optional[torch.Tensor], loss: torch.Tensor, log: dict, prefix: str) -> torch.Tensor:
    """The diffusion ``loss`` plus λ times the REPA term (unchanged without a ``target``); logs the
    mean cosine similarity and the total."""
    if target is None:
        return loss
    align = alignment.loss(hidden["h"], target)
    loss = loss + alignment.weight * align
    log[f"{prefix}/align_similarity"] = -align.detach()  # at most 1
    log[f"{prefix}/loss"] = loss
    return loss


ALIGNMENT_KEYS = ("teacher_config", "block", "weight", "hidden", "detach_condition")


def make_alignment(unet: nn.Module, config: Optional[Mapping[str, Any]],
                   path: str = "model.params.representation_alignment") -> Optional[RepresentationAlignment]:
    """The model's REPA term from its ``representation_alignment`` entry (None: off)."""
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise ConfigError(path, f"must be a mapping with keys {', '.join(ALIGNMENT_KEYS)}, got {type(config).__name__}")
    unknown = sorted(set(config) - set(ALIGNMENT_KEYS))
    if unknown:
        raise ConfigError(path, f"unknown key(s) {', '.join(map(str, unknown))}; expected {', '.join(ALIGNMENT_KEYS)}")
    if "teacher_config" not in config:
        raise ConfigError(f"{path}.teacher_config", "missing: the frozen encoder whose features the UNet aligns with")
    return RepresentationAlignment(unet, path=path, **config)
