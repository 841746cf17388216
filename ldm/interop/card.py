"""The model card (README.md) of an exported folder, and the README of component folders."""
from __future__ import annotations

import json
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

__all__ = ["components_readme", "model_card"]

_USAGE = {
    "LDMPipeline": (
        "pipe = DiffusionPipeline.from_pretrained(\"{repo}\")\n"
        "images = pipe(batch_size=4, num_inference_steps=50, eta=0.0).images"
    ),
    "StableDiffusionPipeline": (
        "pipe = DiffusionPipeline.from_pretrained(\"{repo}\")\n"
        "images = pipe(\"a prompt\", num_inference_steps=50, guidance_scale=3.0,\n"
        "              height={size}, width={size}).images"
    ),
    "LDMTextToImagePipeline": (
        "pipe = DiffusionPipeline.from_pretrained(\"{repo}\")\n"
        "# the pipeline sizes latents as height // 8: pass 8 x the latent size\n"
        "images = pipe(\"a prompt\", num_inference_steps=50, guidance_scale=3.0,\n"
        "              height={latent8}, width={latent8}).images"
    ),
    "LDMSuperResolutionPipeline": (
        "pipe = DiffusionPipeline.from_pretrained(\"{repo}\")\n"
        "# low_res: (B, 3, h, w) in [-1, 1], or a PIL image\n"
        "images = pipe(low_res, num_inference_steps=50, eta=0.0).images"
    ),
}


def _data(config: DictConfig) -> str:
    data = config.get("data")
    if data is None:
        return "not recorded in the exported config"
    train = OmegaConf.select(data, "params.train")
    if train is None:
        return "not recorded in the exported config"
    params = OmegaConf.to_container(train.get("params") or {}, resolve=True)
    return f"`{train.get('target')}` with {json.dumps(params)}"


def model_card(config: DictConfig, info: dict, metrics: Optional[dict] = None, license: str = "mit") -> str:
    """README.md with Hub metadata, how to load the folder, and how the model was trained."""
    pipeline, kind = info.get("pipeline"), info["kind"]
    model = config.model if "model" in config else config
    size = OmegaConf.select(model, "params.image_size")
    latent8 = 8 * size if isinstance(size, int) else "8 * latent size"
    factor = 2 ** (len(OmegaConf.select(model, "params.first_stage_config.params.ddconfig.ch_mult") or [1]) - 1)
    tags = ["latent-diffusion", "ldm", f"ldm-{kind}"]
    lines = ["---", f"license: {license}", "library_name: diffusers", "tags:"] + [f"- {t}" for t in tags]
    if pipeline:
        tag = {"text": "text-to-image", "unconditional": "unconditional-image-generation"}.get(kind, "image-to-image")
        lines.append(f"pipeline_tag: {tag}")
    lines += ["---", "", f"# Latent diffusion model ({kind})", ""]
    lines += ["Trained with the `ldm` framework (latent diffusion, Rombach et al., CVPR 2022) and exported "
              "with `scripts/convert_to_diffusers.py`.", ""]
    what = (f"a diffusers `{pipeline}`" if pipeline else "a diffusers autoencoder" if kind == "autoencoder"
            else "diffusers components (see `README_components.md`)")
    lines += ["## Use", "", f"This folder holds {what}.", ""]
    if pipeline:
        image_size = size * factor if isinstance(size, int) else "H"
        lines += ["```python", "from diffusers import DiffusionPipeline",
                  _USAGE[pipeline].format(repo="<this folder or repo id>", size=image_size, latent8=latent8), "```", ""]
    elif kind == "autoencoder":
        lines += ["```python", "from diffusers import AutoencoderKL, VQModel",
                  "vae = AutoencoderKL.from_pretrained(\"<this folder or repo id>\")  # VQModel for VQ models",
                  "```", ""]
    if info.get("note"):
        lines += [f"Note: {info['note']}.", ""]
    lines += ["## Training", "",
              f"- source: `{info.get('source') or 'unknown'}`",
              f"- training steps: {info['steps'] if info.get('steps') is not None else 'unknown'}",
              f"- weights: {'EMA' if info.get('ema') else 'trained (no EMA copy, or --no-ema)'}, "
              f"stored as {info.get('dtype')}",
              f"- latent scale factor: {info.get('scale_factor')}" if info.get("scale_factor") is not None else "",
              f"- data: {_data(config)}", ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(metrics.items()) if isinstance(v, (int, float, str))]
        lines.append("")
    lines += ["## Training config", "", "The full config is in `ldm_config.yaml`:", "", "```yaml",
              OmegaConf.to_yaml(model).rstrip(), "```", "", "## License", "", f"{license}", ""]
    return "\n".join(line for line in lines if line is not None)


_COMPONENTS = """# Driving the components of this {kind} model

{why}. The folder holds loadable components:

- `unet/`: `{unet}`, the denoiser eps(z_t, t, c)
- `vae/`: `{vae}`, the first stage; latents are `scaling_factor * E(x)`, images `D(z / scaling_factor)`
- `scheduler/`: `DDIMScheduler` with the model's noise schedule
- {cond}

```python
import safetensors.torch
import torch
from diffusers import DDIMScheduler, {unet}, {vae}

FOLDER = "<this folder>"
unet = {unet}.from_pretrained(FOLDER, subfolder="unet")
vae = {vae}.from_pretrained(FOLDER, subfolder="vae")
scheduler = DDIMScheduler.from_pretrained(FOLDER, subfolder="scheduler")
scheduler.set_timesteps(50)
latents = torch.randn(1, {channels}, {size}, {size})
{cond_setup}
for t in scheduler.timesteps:
{step}
    latents = scheduler.step(eps, t, latents).prev_sample
images = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
```
"""

_CONDITIONS = {
    "class": ("`cond_stage/`: the class embedding table (`embedding.weight`, our ClassEmbedder)",
              "table = safetensors.torch.load_file(f\"{FOLDER}/cond_stage/model.safetensors\")[\"embedding.weight\"]\n"
              "class_id = 0  # the row after the last class is the null class of guided models\n"
              "context = table[torch.tensor([class_id])][:, None]  # (B, 1, dim)",
              "    eps = unet(latents, t, encoder_hidden_states=context).sample"),
    "concat": ("`cond_stage/`: our conditioner (`config.json` names it; its weights, if any, in "
               "`model.safetensors`); its output is concatenated to z_t along channels",
               "c = ...  # the conditioner's output, (B, C_c, {size}, {size}); see cond_stage/config.json",
               "    eps = unet(torch.cat([latents, c], dim=1), t).sample"),
    "crossattn": ("`cond_stage/`: our conditioner (`config.json` names it, weights in `model.safetensors`); its "
                  "output is the cross-attention context",
                  "context = ...  # the conditioner's output, (B, tokens, dim); see cond_stage/config.json",
                  "    eps = unet(latents, t, encoder_hidden_states=context).sample"),
    "text": ("`bert/` and `tokenizer/`: the LDM-BERT text encoder and its tokenizer",
             "from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel\n"
             "from transformers import AutoTokenizer\n"
             "bert = LDMBertModel.from_pretrained(FOLDER, subfolder=\"bert\")\n"
             "tokenizer = AutoTokenizer.from_pretrained(FOLDER, subfolder=\"tokenizer\")\n"
             "ids = tokenizer([prompt], padding=\"max_length\", max_length=tokenizer.model_max_length,\n"
             "                truncation=True, return_tensors=\"pt\").input_ids\n"
             "context = bert(ids)[0]",
             "    eps = unet(latents, t, encoder_hidden_states=context).sample"),
}


def components_readme(kind: str, model: Any, why: str, unet: str, vae: str) -> str:
    """How to sample the components of a model no diffusers pipeline runs (``unet``/``vae``: the
    diffusers classes of the exported UNet and first stage)."""
    concat = model.model.conditioning_key == "concat"
    key = "text" if kind == "text" else "class" if kind == "class" else "concat" if concat else "crossattn"
    cond, setup, step = _CONDITIONS[key]
    size = model.image_size
    why = why[0].upper() + why[1:]
    return _COMPONENTS.format(kind=kind, why=why, unet=unet, vae=vae, cond=cond, channels=model.channels, size=size,
                              cond_setup=setup.replace("{size}", str(size)), step=step)
