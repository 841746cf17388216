"""Write a model trained here as a diffusers folder (safetensors + JSON configs).

What each kind of model becomes:

=====================================  =================================================
unconditional LDM (KL or VQ)           ``LDMPipeline``
text-to-image, CLIP text encoder       ``StableDiffusionPipeline`` (no safety checker)
text-to-image, BERT text encoder       ``LDMTextToImagePipeline`` (77-token encoders;
                                       shorter ones: components)
x4 super-resolution                    ``LDMSuperResolutionPipeline`` (a KL first stage's
                                       latent scale folded in; scaled VQ: components)
autoencoder alone                      an ``AutoencoderKL`` or ``VQModel`` folder
class, inpainting, semantic, layout    components: unet/, vae/, scheduler/, cond_stage/
                                       and a README on how to drive them
=====================================  =================================================

The scheduler is diffusers' ``DDIMScheduler`` set to our model's own noise schedule and
parameterisation, configured like our DDIM sampler (Song et al. 2021; uniform "leading" steps
with offset 1), so the pipelines sample what ``scripts/sample_diffusion.py --sampler ddim`` does.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.interop.card import model_card, components_readme
from ldm.interop.weights import (Component, ConversionError, bert_component, clip_component,
                                 first_stage_component, require_diffusers, unet_component)

__all__ = ["DTYPES", "ExportResult", "export_checkpoint", "export_model", "push_to_hub", "scheduler_config"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
EXPORT_INFO = "ldm_export.json"  # what was exported, from where, and how (kind, pipeline, dtype, EMA)


@dataclass
class ExportResult:
    out: Path
    kind: str                    # unconditional | text | superres | autoencoder | class | inpainting | ...
    pipeline: Optional[str]      # the diffusers pipeline class, None for component folders
    ema: bool                    # EMA weights were exported
    files: list[str] = field(default_factory=list)


def scheduler_config(model: Any, params: DictConfig) -> dict:
    """DDIMScheduler settings that reproduce our DDIM sampler on ``model``'s schedule."""
    parameterization = getattr(model, "parameterization", "eps")
    if parameterization not in PREDICTION_TYPES:
        raise ConversionError(f"model.params.parameterization={parameterization!r} has no diffusers counterpart")
    config = dict(num_train_timesteps=int(model.num_timesteps), clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1, timestep_spacing="leading", prediction_type=PREDICTION_TYPES[parameterization])
    if params.get("beta_schedule", "linear") == "linear" and params.get("given_betas") is None:
        # CompVis "linear" is linear in sqrt(beta): diffusers calls it scaled_linear
        config.update(beta_schedule="scaled_linear", beta_start=float(params.get("linear_start", 1e-4)),
                      beta_end=float(params.get("linear_end", 2e-2)))
    else:
        config.update(beta_schedule="linear", trained_betas=[float(b) for b in model.betas.double().tolist()])
    return config


def _is_autoencoder(model: Any) -> bool:
    return hasattr(model, "encoder") and hasattr(model, "decoder") and not hasattr(model, "first_stage_model")


def _kind(model: Any) -> str:
    from ldm.inference import model_kind

    if _is_autoencoder(model):
        return "autoencoder"
    if not hasattr(model, "first_stage_model"):
        raise ConversionError(f"{type(model).__name__}: only latent diffusion models and autoencoders export to "
                              "diffusers; pixel-space DDPMs are not supported")
    return model_kind(model)


def _text_encoder(model: Any) -> str:
    name = type(model.cond_stage_model).__name__
    if name == "FrozenCLIPEmbedder":
        return "clip"
    if name == "BERTEmbedder" and getattr(model.cond_stage_model, "use_tknz_fn", False):
        return "bert"
    raise ConversionError(f"cond_stage_config: the text encoder {name} has no diffusers counterpart "
                          "(FrozenCLIPEmbedder and BERTEmbedder with a tokenizer are supported)")


def _clip_parts(encoder: Any, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """transformers' CLIPTextModel and tokenizer for our FrozenCLIPEmbedder."""
    tok = encoder.tokenizer  # raises TokenizerUnavailableError naming what to provide
    tok.model_max_length = int(encoder.max_length)
    ids = {f"{t}_token_id": getattr(tok, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    return clip_component(encoder, ids).build(dtype), tok


def _bert_parts(encoder: Any, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """diffusers' LDMBertModel and a transformers tokenizer for our BERTEmbedder."""
    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = _bert_tokenizer(encoder, Path(vocab_dir))
    return bert_component(encoder).build(dtype), tokenizer


def _write_bpe_files(folder: Path) -> None:
    """vocab.json + merges.txt beside tokenizer.json (transformers 5 writes only the latter), so
    that older transformers and our ``tokenizer_path`` read the folder's tokenizer too."""
    if (folder / "vocab.json").is_file() or not (folder / "tokenizer.json").is_file():
        return
    model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _bert_tokenizer(encoder: Any, tmp: Path) -> Any:
    """A transformers BERT tokenizer with our vocabulary: the WordPiece one as is, the closed
    word-level one written as a vocab.txt (ids unchanged: [PAD] [UNK] [CLS] [SEP] then the words)."""
    from ldm.modules.encoders.tokenizers import load_bert_tokenizer

    tknz = encoder.tknz_fn
    inner = getattr(tknz, "tokenizer", None)
    if hasattr(inner, "inverse"):  # WordTokenizer
        words = [inner.inverse[i] for i in range(inner.vocab_size)]
        joined = [w for w in words if any(c in w for c in "-'_")]
        if joined:  # our word tokenizer keeps these inside words, BERT's splits them off
            warnings.warn(f"the exported BERT tokenizer splits {joined[:3]} at - ' _ where ours keeps one word; "
                          "prompts with them encode differently in diffusers", stacklevel=3)
        (tmp / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
        tok = load_bert_tokenizer(str(tmp / "vocab.txt"))
    else:
        tok = inner
    tok.model_max_length = int(encoder.transformer.max_seq_len)
    return tok


def _save_component(component: Component, folder: Path, dtype: torch.dtype) -> None:
    component.build(dtype).save_pretrained(str(folder), safe_serialization=True)


def _save_cond_stage(model: Any, cond_cfg: Any, folder: Path, dtype: torch.dtype) -> None:
    """Our conditioner as is (safetensors with our keys + its target/params), for kinds whose
    τ_θ has no diffusers counterpart (class embeddings, spatial rescalers, box transformers)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    sd = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.cond_stage_model.state_dict().items()}
    if sd:
        save_file(sd, str(folder / "model.safetensors"))
    config = OmegaConf.to_container(cond_cfg, resolve=True) if isinstance(cond_cfg, DictConfig) else cond_cfg
    (folder / "config.json").write_text(json.dumps({"cond_stage_config": config,
                                                    "cond_stage_key": getattr(model, "cond_stage_key", None),
                                                    "conditioning_key": model.model.conditioning_key},
                                                   indent=2) + "\n")


@torch.no_grad()
def fold_latent_scale(vae: torch.nn.Module, scale: float) -> torch.nn.Module:
    """A copy of a KL autoencoder that encodes to ``scale * z`` and decodes ``D(z' / scale)``, so
    that it works in the diffusion latent space with ``scaling_factor`` 1: the posterior mean is
    scaled (and its log-variance shifted by 2 log scale) in ``quant_conv``, the input of
    ``post_quant_conv`` is divided by ``scale``. Computed in float64."""
    folded = copy.deepcopy(vae)
    q, pq = folded.quant_conv, folded.post_quant_conv
    c = q.weight.shape[0] // 2  # moments = [mean | logvar] along channels
    w, b = q.weight.double(), q.bias.double()
    w[:c] *= scale
    b[:c] *= scale
    b[c:] += 2.0 * math.log(scale)
    q.weight.copy_(w)
    q.bias.copy_(b)
    pq.weight.copy_(pq.weight.double() / scale)
    folded.register_to_config(scaling_factor=1.0)
    return folded


def _pipeline_kind(model: Any, kind: str, params: DictConfig) -> tuple[Optional[str], str]:
    """(diffusers pipeline class or None for a component folder, why not a pipeline)."""
    if kind == "unconditional":
        return "LDMPipeline", ""
    if kind == "text":
        if _text_encoder(model) == "clip":
            return "StableDiffusionPipeline", ""
        length = int(model.cond_stage_model.transformer.max_seq_len)
        if length == 77:
            return "LDMTextToImagePipeline", ""
        return None, (f"LDMTextToImagePipeline pads every prompt to 77 tokens; this BERT encoder has "
                      f"max_seq_len={length}, so its components are exported instead")
    if kind == "superres":
        scale = float(model.scale_factor)
        if scale != 1.0 and hasattr(model.first_stage_model, "quantize"):
            return None, (f"LDMSuperResolutionPipeline decodes latents without dividing by a scale factor, and this "
                          f"VQ model's scale_factor={scale:g} cannot be folded into its codebook lookup, so its "
                          "components are exported instead")
        identity = type(model.cond_stage_model).__name__ == "Identity"
        if not identity or params.unet_config.params.in_channels != 2 * model.channels:
            return None, ("LDMSuperResolutionPipeline concatenates the low-resolution image itself to latents of as "
                          "many channels; this model conditions otherwise, so its components are exported instead")
        return "LDMSuperResolutionPipeline", ""
    if kind in ("class", "inpainting", "semantic", "layout"):
        return None, f"no diffusers pipeline runs {kind} models"
    raise ConversionError(f"a {kind!r} model (conditioning_key={model.model.conditioning_key!r}, cond_stage_key="
                          f"{getattr(model, 'cond_stage_key', None)!r}) is not supported by the diffusers export")


def _write(model: Any, cfg: DictConfig, kind: str, tmp: Path, dtype: torch.dtype) -> tuple[Optional[str], str]:
    """Write the folder's components; returns (pipeline class or None, why not a pipeline)."""
    diffusers = require_diffusers()
    params = cfg.params
    if kind == "autoencoder":
        _save_component(first_stage_component(model, params, 1.0, where="model.params"), tmp, dtype)
        return None, ""
    pipeline, why = _pipeline_kind(model, kind, params)
    scale = float(model.scale_factor)
    unet = unet_component(model.model.diffusion_model, params.unet_config.params,
                          where="model.params.unet_config.params").build(dtype)
    vae = first_stage_component(model.first_stage_model, params.first_stage_config.params, scale,
                                where="model.params.first_stage_config.params").build(dtype)
    scheduler = diffusers.DDIMScheduler(**scheduler_config(model, params))
    if pipeline == "LDMPipeline":
        pipe = diffusers.LDMPipeline(vqvae=vae, unet=unet, scheduler=scheduler)
    elif pipeline == "LDMSuperResolutionPipeline":
        if scale != 1.0:  # the pipeline decodes without unscaling: it gets a copy with the scale folded in
            vae.save_pretrained(str(tmp / "first_stage"), safe_serialization=True)
            vae = fold_latent_scale(vae, scale)
            why = (f"vqvae/ is the autoencoder with the latent scale {scale:g} folded into its 1x1 quant convs "
                   "(LDMSuperResolutionPipeline decodes latents without unscaling them); first_stage/ is the "
                   "autoencoder as trained")
        pipe = diffusers.LDMSuperResolutionPipeline(vqvae=vae, unet=unet, scheduler=scheduler)
    elif pipeline == "StableDiffusionPipeline":
        text_encoder, tokenizer = _clip_parts(model.cond_stage_model, dtype)
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif kind == "text":  # BERT: the LDMTextToImagePipeline, or its components
        bert, tokenizer = _bert_parts(model.cond_stage_model, dtype)
        if pipeline:
            pipe = diffusers.LDMTextToImagePipeline(vqvae=vae, bert=bert, tokenizer=tokenizer, unet=unet,
                                                    scheduler=scheduler)
        else:
            bert.save_pretrained(str(tmp / "bert"), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
    if pipeline:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        if pipeline == "StableDiffusionPipeline":
            _write_bpe_files(tmp / "tokenizer")
        return pipeline, why
    unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
    vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
    scheduler.save_pretrained(str(tmp / "scheduler"))
    if kind != "text":
        _save_cond_stage(model, params.get("cond_stage_config"), tmp / "cond_stage", dtype)
    (tmp / "README_components.md").write_text(components_readme(kind, model, why, type(unet).__name__,
                                                                type(vae).__name__))
    return None, why


def export_model(
    model: Any,                          # a loaded LatentDiffusion or autoencoder (eval mode, CPU)
    config: DictConfig,                  # the full config (model section, and data when known)
    out: Union[str, os.PathLike],        # folder to create; must not exist or be empty
    dtype: str = "fp32",                 # fp32 | fp16 | bf16 for the written weights
    ema: bool = False,                   # the model holds EMA weights (for the model card)
    source: Optional[str] = None,        # where the model came from (for the model card)
    steps: Optional[int] = None,         # training steps, when known
    metrics: Optional[dict] = None,      # evaluation figures, when present
    license: str = "mit",
) -> ExportResult:
    """Write ``model`` as a diffusers folder at ``out``, atomically (a temporary folder renamed)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out}: exists and is not an empty folder; choose a new folder")
    cfg = config.model if "model" in config else config
    kind = _kind(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with torch.no_grad():
            pipeline, why = _write(model, cfg, kind, tmp, DTYPES[dtype])
        info = {"kind": kind, "pipeline": pipeline, "note": why, "scale_factor": _scale(model), "ema": ema,
                "dtype": dtype, "source": source, "steps": steps}
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "ldm_config.yaml").write_text(OmegaConf.to_yaml(config))
        (tmp / "README.md").write_text(model_card(config, info, metrics=metrics, license=license))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return ExportResult(out=out, kind=kind, pipeline=pipeline, ema=ema, files=files)


def _scale(model: Any) -> Optional[float]:
    value = getattr(model, "scale_factor", None)
    return None if value is None else float(value)


def push_to_hub(folder: Union[str, os.PathLike], repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hub repository ``repo_id``; the folder stays on disk either way."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise ImportError("--push-to-hub needs the `huggingface_hub` package (pip install huggingface_hub); "
                          f"the exported folder is at {folder}") from exc
    try:
        api = huggingface_hub.HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload ldm export")
    except Exception as exc:  # network, authentication, permissions: all leave the folder for a retry
        raise RuntimeError(f"--push-to-hub {repo_id}: upload failed ({type(exc).__name__}: {exc}). The exported "
                           f"folder is complete at {folder}; retry with `huggingface-cli upload {repo_id} {folder}` "
                           "once online and logged in (`huggingface-cli login`).") from exc
    return str(getattr(info, "commit_url", info))


def _global_step(ckpt: Path) -> Optional[int]:
    """The training step a Lightning checkpoint records (None for bare weight files)."""
    from ldm.checkpoint import CheckpointError, load_training_checkpoint

    if ckpt.suffix == ".safetensors":
        return None
    try:
        obj = load_training_checkpoint(ckpt, mmap=True)
    except (CheckpointError, OSError, RuntimeError):
        return None  # legacy checkpoints with pickled objects: the step is not needed to export
    step = obj.get("global_step") if isinstance(obj, dict) else None
    return int(step) if isinstance(step, int) else None


def export_checkpoint(
    configs: Sequence[Union[str, os.PathLike]],  # the model's config(s), merged in order
    ckpt: Union[str, os.PathLike],
    out: Union[str, os.PathLike],
    prefer_ema: bool = True,                      # EMA weights when the checkpoint has them
    dtype: str = "fp32",
    metrics: Optional[dict] = None,
    license: str = "mit",
) -> ExportResult:
    """Load ``ckpt`` with its config(s) and export it with :func:`export_model`."""
    from ldm.checkpoint import ema_weights, load_state_dict
    from ldm.config.loading import merge_configs
    from ldm.inference import load_model

    ckpt = Path(ckpt)
    has_ema = ema_weights(load_state_dict(ckpt))[1] > 0
    model = load_model(list(configs), ckpt, device="cpu", prefer_ema=prefer_ema)
    config = merge_configs([str(c) for c in configs])
    return export_model(model, config, out, dtype=dtype, ema=prefer_ema and has_ema, source=str(ckpt),
                        steps=_global_step(ckpt), metrics=metrics, license=license)
