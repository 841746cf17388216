"""What gets sampled for each evaluation protocol, batch by batch, as ``make(indices)`` callables
for :meth:`ldm.eval.shards.ShardStore.fill`.

* generation (Tab. 1-3): unconditional, class-conditional (class of sample i = i mod n_classes,
  so N samples are class-balanced whenever N is a multiple of the class count) or text (caption
  of sample i = line i mod n of the caption file) samples from noise;
* reconstruction (Tab. 8): x -> D(E(x)) of a first stage on a dataset split (posterior mode for
  KL autoencoders, so deterministic);
* super-resolution (Tab. 4): the LR image of each validation example upscaled ×4;
* inpainting (Tab. 7): each validation image filled inside its mask.

The paired protocols store the dataset image beside each output (``reference``), so the paired
metrics compare with exactly the images the model saw.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from ldm.config.errors import ConfigError
from ldm.eval.shards import batch_generator, per_sample_noise, sample_noise
from ldm.inference.conditioning import class_conditioning, model_kind, prompt_conditioning
from ldm.inference.images import to_uint8
from ldm.inference.pipelines import SamplingOptions, generate, inpaint, superres
from ldm.inference.sampling import ComposedModel, GuideModel
from ldm.util import instantiate_from_config

__all__ = ["generation_batches", "inpainting_batches", "read_captions", "reconstruction_batches",
           "superres_batches", "validation_dataset"]

Make = Callable[[np.ndarray], tuple[np.ndarray, Optional[np.ndarray]]]


def read_captions(path: str) -> list[str]:
    """One caption per line (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        captions = [line.strip() for line in fh if line.strip()]
    if not captions:
        raise ValueError(f"--captions {path}: no captions (expected one per line)")
    return captions


def generation_batches(model: Any, opts: SamplingOptions, seed: int,
                       captions: Optional[Sequence[str]] = None, guide: Optional[GuideModel] = None,
                       compose: Optional[ComposedModel] = None) -> Make:
    """Samples from noise; sample i starts from noise seeded by (seed, i). ``guide``: autoguidance
    by a weaker model of the same kind, conditioned like the model on every batch; ``compose``: a
    second text model whose guidance direction is added (text models only)."""
    kind = model_kind(model)
    if kind not in ("unconditional", "class", "text"):
        raise ValueError(f"sampling-based evaluation covers unconditional, class and text models; this one is "
                         f"{kind!r} (use --task superres or --task inpainting for concat-conditioned models)")
    if kind == "text" and not captions:
        raise ValueError("a text-conditioned model needs --captions FILE (one caption per line)")
    if kind != "text" and captions:
        raise ValueError(f"--captions is for text-conditioned models; this one is {kind!r}")
    if kind == "unconditional" and opts.scale != 1.0:
        raise ValueError(f"--scale {opts.scale} needs a class- or text-conditioned model; this one is unconditional")
    if guide is not None and model_kind(guide.model) != kind:
        raise ValueError(f"the guide model is {model_kind(guide.model)!r}, the sampled model {kind!r}; autoguidance "
                         "needs a weaker model of the same task")
    if compose is not None and (kind != "text" or model_kind(compose.model) != "text"):
        raise ValueError(f"composition needs two text-conditioned models; these are {kind!r} and "
                         f"{model_kind(compose.model)!r}")
    n_classes = int(model.cond_stage_model.n_classes) if kind == "class" else 0
    shape = (model.channels, model.image_size, model.image_size)

    def make(indices: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        cond = uncond = labels = None
        if kind == "class":
            labels = indices % n_classes
            cond, uncond = class_conditioning(model, labels.tolist())
            if opts.scale != 1.0 and uncond is None:
                raise ValueError(f"--scale {opts.scale} needs a model trained with a null class (ucg_rate > 0)")
            uncond = uncond if opts.scale != 1.0 else None
            if guide is not None:
                guide.cond = class_conditioning(guide.model, labels.tolist())[0]
        elif kind == "text":
            prompts = [captions[i % len(captions)] for i in indices]
            cond, uncond = prompt_conditioning(model, prompts)
            uncond = uncond if opts.scale != 1.0 else None
            if guide is not None:
                guide.cond = prompt_conditioning(guide.model, prompts)[0]
            if compose is not None:
                compose.cond, compose.uncond = prompt_conditioning(compose.model, prompts)
        # Initial and per-step noise of sample i depend on (seed, i) only: any batch size gives the same images.
        images = generate(model, len(indices), opts, cond=cond, uncond=uncond, x_T=sample_noise(seed, indices, shape),
                          noise_sampler=per_sample_noise(seed, indices, shape, model.device), guide=guide,
                          compose=compose)
        return to_uint8(images), labels

    return make


def _stack(dataset: Any, indices: np.ndarray, key: str) -> torch.Tensor:
    """Examples' ``key`` (HWC float in [-1, 1]) as a (B, C, H, W) tensor."""
    arrs = []
    for i in indices:
        example = dataset[int(i)]
        if example is None:  # the dataset skips unreadable files (it has reported which)
            raise ValueError(f"example {int(i)} of the evaluated split is unreadable; paired evaluations pair "
                             "outputs with examples by index, so repair or remove that file and start over")
        if key not in example:
            raise KeyError(f"the dataset's examples have no {key!r} (keys: {sorted(example)})")
        arrs.append(np.asarray(example[key], dtype=np.float32))
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


class PairedBatches:
    """``make(indices)`` for paired protocols: returns the outputs and keeps the references of the
    last batch in ``reference`` (written to the shard beside the outputs)."""

    def __init__(self, fn: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]):
        self.fn = fn

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        outputs, reference = self.fn(indices)
        return to_uint8(outputs), to_uint8(reference), None


def reconstruction_batches(autoencoder: Any, dataset: Any, device: torch.device) -> PairedBatches:
    """x -> D(E(x)) with the posterior mode (KL) or the quantised code (VQ)."""
    from ldm.models.autoencoder import AutoencoderKL

    @torch.no_grad()
    def fn(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = _stack(dataset, indices, "image")
        xd = x.to(device)
        out = autoencoder(xd, sample_posterior=False) if isinstance(autoencoder, AutoencoderKL) else autoencoder(xd)
        rec = out[0] if isinstance(out, (tuple, list)) else out
        return rec.clamp(-1.0, 1.0).cpu(), x

    return PairedBatches(fn)


def superres_batches(model: Any, dataset: Any, opts: SamplingOptions, seed: int) -> PairedBatches:
    """×4 upscaling of each example's ``LR_image``; the reference is its ``image``."""
    def fn(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        lr = _stack(dataset, indices, "LR_image")
        out = superres(model, lr, opts, generator=batch_generator(seed, int(indices[0])))
        return out.cpu(), _stack(dataset, indices, "image")

    return PairedBatches(fn)


def inpainting_batches(model: Any, dataset: Any, opts: SamplingOptions, seed: int) -> PairedBatches:
    """Each example's ``image`` filled inside its ``mask``; the reference is the original image."""
    def fn(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image = _stack(dataset, indices, "image")
        mask = _stack(dataset, indices, "mask")
        out = inpaint(model, image, mask, opts, generator=batch_generator(seed, int(indices[0])))
        return out.images.cpu(), image

    return PairedBatches(fn)


def validation_dataset(configs: Sequence[Any], split: str = "validation", overrides: Optional[dict] = None) -> Any:
    """Instantiate ``data.params.<split>`` of the merged configs (a run's saved configs, or YAML
    files), with ``overrides`` merged into its params. A missing dataset raises the dataset's
    own missing-data message (expected layout and how to prepare it)."""
    from ldm.config.loading import merge_configs

    cfg = merge_configs([str(c) for c in configs])
    where = ", ".join(map(str, configs))
    node = OmegaConf.select(cfg, f"data.params.{split}")
    if node is None:
        raise ConfigError(where, f"no data.params.{split} section: pass --data <config with a data section>")
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    if overrides:
        node.params = OmegaConf.merge(node.get("params") or {}, overrides)
    return instantiate_from_config(node, path=f"data.params.{split}")
