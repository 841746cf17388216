"""Read a diffusers-format folder into our checkpoint format, for the model a config describes.

The config says what our model is; the folder supplies its weights: the UNet, the first stage
and, where the config has one, the text encoder (or the conditioner of a component folder
written by the export). Tensors are placed by the inverse of the export's key mapping (see
:mod:`ldm.interop.weights`), so an exported model comes back bit for bit. Everything else our
model holds (the noise-schedule buffers) follows from the config; the folder's scheduler must
agree with it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig

from ldm.inference.loading import strip_ckpt_paths
from ldm.interop.weights import (Component, ConversionError, bert_component, clip_component, first_stage_component,
                                 from_diffusers, require_diffusers, unet_component)

__all__ = ["build_template", "import_folder", "read_weights"]

# safetensors first; .bin files of older Hub repositories are read without unpickling code
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")
# component subfolders by role, in the names the pipelines (or our component export) use
# (first_stage/: the autoencoder as trained, beside a vqvae/ with the latent scale folded in)
ROLES = {"unet": ("unet",), "first_stage": ("first_stage", "vqvae", "vae"), "text": ("text_encoder", "bert"),
         "cond_stage": ("cond_stage",)}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of one component folder: one weights file, or safetensors shards."""
    from safetensors.torch import load_file

    from ldm.checkpoint import load_state_dict

    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return load_state_dict(folder / name)
    if any(folder.glob("*.safetensors.index.json")):  # sharded (large models saved by diffusers)
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(folder.glob("*-of-*.safetensors")):
            out.update(load_file(str(shard), device="cpu"))
        if out:
            return out
    raise ConversionError(f"{folder}: no weights file ({', '.join(WEIGHT_FILES)} or safetensors shards)")


def build_template(config: Any) -> tuple[torch.nn.Module, DictConfig]:
    """Our model as the config describes it, randomly initialised (no checkpoint read, no EMA)."""
    from ldm.inference.loading import model_config
    from ldm.util import instantiate_from_config

    cfg = model_config(config)
    strip_ckpt_paths(cfg)  # the folder holds the weights; files a training config named need not exist
    if cfg.get("params") is None:
        cfg.params = {}
    if "use_ema" in cfg.params or str(cfg.target).endswith((".DDPM", ".LatentDiffusion")):
        cfg.params.use_ema = False
    model = instantiate_from_config(cfg, path="model")
    return model.eval(), cfg


def _subfolder(root: Path, role: str) -> Optional[Path]:
    for name in ROLES[role]:
        if (root / name / "config.json").is_file() or (root / name).is_dir():
            return root / name
    return None


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _component_weights(component: Component, folder: Optional[Path], role: str, root: Path) -> dict[str, torch.Tensor]:
    if folder is None:
        raise ConversionError(f"{root}: no {' or '.join(n + '/' for n in ROLES[role])} folder, but the config's "
                              f"model has a {role.replace('_', ' ')}")
    return from_diffusers(component, read_weights(folder), where=str(folder))


def _check_schedule(model: Any, root: Path) -> None:
    folder = root / "scheduler"
    if not (folder / "scheduler_config.json").is_file():
        return
    diffusers = require_diffusers()
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(folder))
    ours = model.alphas_cumprod.float().cpu()
    theirs = scheduler.alphas_cumprod.float()
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4):
        raise ConversionError(f"{folder}/scheduler_config.json: its noise schedule ({len(theirs)} steps) differs from "
                              f"the config's (timesteps/linear_start/linear_end/beta_schedule); use the config the "
                              "model was trained with")
    theirs_type = scheduler.config.prediction_type
    ours_type = getattr(model, "parameterization", "eps")
    if {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}.get(theirs_type) != ours_type:
        raise ConversionError(f"{folder}/scheduler_config.json: prediction_type={theirs_type!r} but the config's "
                              f"model.params.parameterization is {ours_type!r}")


def _diffusion_state(model: Any, cfg: DictConfig, root: Path) -> dict[str, torch.Tensor]:
    params = cfg.params
    sd: dict[str, torch.Tensor] = {}
    unet = unet_component(model.model.diffusion_model, params.unet_config.params,
                          where="model.params.unet_config.params")
    sd.update(_prefixed("model.diffusion_model.", _component_weights(unet, _subfolder(root, "unet"), "unet", root)))
    vae_folder = _subfolder(root, "first_stage")
    scale = float(model.scale_factor)
    if vae_folder is not None and (vae_folder / "config.json").is_file():
        scale = float(json.loads((vae_folder / "config.json").read_text()).get("scaling_factor", scale))
    vae = first_stage_component(model.first_stage_model, params.first_stage_config.params, scale,
                                where="model.params.first_stage_config.params")
    sd.update(_prefixed("first_stage_model.", _component_weights(vae, vae_folder, "first_stage", root)))
    cond_sd = model.cond_stage_model.state_dict() if getattr(model, "cond_stage_model", None) is not None else {}
    if cond_sd:
        name = type(model.cond_stage_model).__name__
        text_folder = _subfolder(root, "text")
        if name in ("FrozenCLIPEmbedder", "BERTEmbedder") and text_folder is not None:
            make = clip_component if name == "FrozenCLIPEmbedder" else bert_component
            enc = make(model.cond_stage_model)
            cond = _component_weights(enc, text_folder, "text", root)
            if name == "FrozenCLIPEmbedder":
                cond = _prefixed("transformer.", cond)
        else:
            folder = _subfolder(root, "cond_stage")
            if folder is None:
                raise ConversionError(f"{root}: the config's conditioner {name} needs a text_encoder/, bert/ or "
                                      "cond_stage/ folder, and there is none")
            cond = read_weights(folder)
            want = {k: tuple(v.shape) for k, v in cond_sd.items()}
            for key, value in cond.items():
                if key not in want:
                    raise ConversionError(f"{folder}: tensor {key!r} has no place in the config's {name}")
                if tuple(value.shape) != want[key]:
                    raise ConversionError(f"{folder}: tensor {key!r} has shape {tuple(value.shape)}, but the config's "
                                          f"cond_stage_model.{key} needs {want[key]}")
            missing = [k for k in want if k not in cond]
            if missing:
                raise ConversionError(f"{folder}: the config's {name} needs tensor {missing[0]!r}, "
                                      "which the folder lacks")
            cond = {k: v.to(cond_sd[k].dtype) for k, v in cond.items()}
        sd.update(_prefixed("cond_stage_model.", cond))
    _check_schedule(model, root)
    template = model.state_dict()
    if "scale_factor" in template:  # scale_by_std models keep the scale as a buffer
        sd["scale_factor"] = torch.tensor(scale, dtype=template["scale_factor"].dtype)
    elif not torch.isclose(torch.tensor(scale), torch.tensor(float(model.scale_factor))):
        raise ConversionError(f"{vae_folder}/config.json: scaling_factor={scale:g}, but the config's "
                              f"model.params.scale_factor is {float(model.scale_factor):g}; set "
                              f"model.params.scale_factor: {scale:g} so that the latents keep their scale")
    for key, value in template.items():  # the schedule buffers: functions of the config
        if key not in sd and not key.startswith(("model.", "first_stage_model.", "cond_stage_model.", "model_ema.")):
            sd[key] = value.clone()
    return sd


def import_folder(folder: Union[str, os.PathLike], config: Any) -> dict[str, torch.Tensor]:
    """Our state dict for the model ``config`` describes, with the weights of diffusers ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such diffusers folder")
    with torch.no_grad():
        model, cfg = build_template(config)
        if hasattr(model, "first_stage_model"):
            return _diffusion_state(model, cfg, root)
        if hasattr(model, "encoder") and hasattr(model, "decoder"):  # an autoencoder alone
            comp = first_stage_component(model, cfg.params, 1.0, where="model.params")
            weights = root if (root / "config.json").is_file() else _subfolder(root, "first_stage")
            return _component_weights(comp, weights, "first_stage", root)
    raise ConversionError(f"{type(model).__name__}: only latent diffusion models and autoencoders import "
                          "from diffusers")
