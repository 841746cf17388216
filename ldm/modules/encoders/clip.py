"""The CLIP text transformer used as τ_θ by Stable Diffusion v1 (conditioning of Sec. 3.3).

Parameter names follow the layout of the released SD v1 checkpoints (which stored a
transformers-4.x ``CLIPTextModel`` under ``cond_stage_model.transformer``)::

    text_model.embeddings.{token_embedding, position_embedding}.weight
    text_model.embeddings.position_ids                      (persistent buffer, [1, max_len])
    text_model.encoder.layers.N.self_attn.{q,k,v,out}_proj  text_model.encoder.layers.N.layer_norm{1,2}
    text_model.encoder.layers.N.mlp.{fc1,fc2}               text_model.final_layer_norm

The forward pass is a causal pre-norm transformer with quick-GELU; the conditioning is the last
hidden state after ``final_layer_norm`` ([b, 77, 768] for ViT-L/14).

Weights are never fetched at construction: a model builds with random weights offline, and the
real ones arrive with the LDM checkpoint or through :func:`load_clip_text_weights`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    width: int = 768  # hidden size d_τ of the conditioning
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    max_length: int = 77  # context length (size of the position table)
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any]) -> "CLIPTextConfig":
        """From a transformers ``config.json`` (a CLIPModel's ``text_config`` or a CLIPTextConfig)."""
        cfg = cfg.get("text_config", cfg)
        return cls(
            vocab_size=cfg.get("vocab_size", cls.vocab_size),
            width=cfg.get("hidden_size", cls.width),
            layers=cfg.get("num_hidden_layers", cls.layers),
            heads=cfg.get("num_attention_heads", cls.heads),
            mlp_width=cfg.get("intermediate_size", cls.mlp_width),
            max_length=cfg.get("max_position_embeddings", cls.max_length),
            layer_norm_eps=cfg.get("layer_norm_eps", cls.layer_norm_eps),
        )


# Text towers of the public OpenAI CLIP models (the image towers are not needed for conditioning).
KNOWN_TEXT_CONFIGS: dict[str, CLIPTextConfig] = {
    "openai/clip-vit-large-patch14": CLIPTextConfig(),
    "openai/clip-vit-large-patch14-336": CLIPTextConfig(),
    "openai/clip-vit-base-patch32": CLIPTextConfig(width=512, heads=8, mlp_width=2048),
    "openai/clip-vit-base-patch16": CLIPTextConfig(width=512, heads=8, mlp_width=2048),
}


def resolve_text_config(version: str, overrides: Optional[Mapping[str, Any]] = None) -> CLIPTextConfig:
    """Architecture for ``version``: a known hub name, or a local directory with a config.json.

    ``overrides`` (field names of :class:`CLIPTextConfig`) replace individual sizes.
    """
    if version in KNOWN_TEXT_CONFIGS:
        base = KNOWN_TEXT_CONFIGS[version]
    elif (Path(version) / "config.json").is_file():
        base = CLIPTextConfig.from_hf_dict(json.loads((Path(version) / "config.json").read_text()))
    elif overrides is not None:
        base = CLIPTextConfig()
    else:
        raise ValueError(
            f"unknown CLIP version {version!r}: expected one of {sorted(KNOWN_TEXT_CONFIGS)}, a local "
            "directory containing config.json, or explicit sizes via text_config"
        )
    if overrides:
        allowed = {f.name for f in fields(CLIPTextConfig)}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ValueError(f"text_config: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        base = CLIPTextConfig(**{**asdict(base), **overrides})
    return base


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU that CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.width)
        # Persistent because the released SD v1 checkpoints contain it.
        self.register_buffer("position_ids", torch.arange(cfg.max_length)[None], persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        return self.token_embedding(input_ids) + self.position_embedding(self.position_ids[:, :n])


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"CLIP width {cfg.width} is not divisible by heads {cfg.heads}")
        self.heads = cfg.heads
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        # Causal: token i sees tokens ≤ i, so the EOS state summarises the prompt.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm block: x ← x + attn(ln1(x)); x ← x + mlp(ln2(x))."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg) for _ in range(cfg.layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2 or input_ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"input_ids must be [batch, length<= {self.config.max_length}], got {tuple(input_ids.shape)}"
            )
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


class CLIPTextModel(nn.Module):
    """Holds the transformer under ``text_model`` so the state-dict keys match the checkpoints."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.text_model = CLIPTextTransformer(cfg)

    @property
    def config(self) -> CLIPTextConfig:
        return self.text_model.config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden state [b, n, width]: the SD v1 conditioning τ_θ(y)."""
        return self.text_model(input_ids)


# ----------------------------------------------------------------------------------------------
# Loading released text weights (explicit, never at construction)


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _find_weight_file(source: str) -> Path:
    p = Path(source)
    if p.is_file():
        return p
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in CLIP directory {source!r}")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, "model.safetensors"))
    except Exception as exc:  # offline, unknown repo, no permission: all mean "not available here"
        raise RuntimeError(
            f"could not fetch CLIP text weights {source!r} from the model hub ({type(exc).__name__}: {exc}). "
            "Offline, pass a local directory or file holding the weights, or load an LDM checkpoint, "
            "which contains cond_stage_model.* already."
        ) from exc


def load_clip_text_weights(model: CLIPTextModel, source: str) -> None:
    """Load the text tower of a released CLIP (local file/directory or hub name) into ``model``.

    Accepts full CLIPModel files (the ``vision_model.*`` entries are ignored) and text-only files
    with or without the ``text_model.`` prefix. Every parameter must be present; the
    ``position_ids`` buffer is recomputed when a file lacks it.
    """
    state = _read_weight_file(_find_weight_file(source))
    if any(k.startswith("text_model.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("text_model.")}
    else:
        text_keys = ("embeddings.", "encoder.", "final_layer_norm.")
        state = {f"text_model.{k}": v for k, v in state.items() if k.startswith(text_keys)}
    own = model.state_dict()
    state.setdefault("text_model.embeddings.position_ids", own["text_model.embeddings.position_ids"])
    state["text_model.embeddings.position_ids"] = state["text_model.embeddings.position_ids"].to(torch.int64)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise RuntimeError(
            f"CLIP text weights in {source!r} do not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(state, strict=True)
