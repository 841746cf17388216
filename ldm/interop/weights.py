"""Our modules' weights <-> diffusers / transformers components (config + state dict).

Where diffusers ships a converter for original LDM checkpoints it does the work
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``), so the key mapping is
diffusers' own; we add what the library lacks: the legacy fused-qkv ``AttentionBlock`` of the
pixel-space-style LDM UNets (-> ``UNet2DModel``), the VQ codebook, and the LDM-BERT text
encoder (-> ``LDMBertModel``, whose layers mirror our x-transformer encoder).

Every forward conversion only moves, renames, reshapes or splits tensors. Its inverse (import)
is derived from the forward one by a *probe*: each of our tensors is replaced by a constant
(its index) broadcast to its shape, the probe goes through the converter, and the constant each
output tensor carries names its source. So import and export cannot drift apart, and a key
that the converter silently drops is reported instead of lost.
"""
from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch

__all__ = [
    "ConversionError", "Component", "bert_component", "clip_component", "first_stage_component",
    "from_diffusers", "require_diffusers", "unet_component",
]

Converter = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


class ConversionError(ValueError):
    """A model or folder that cannot be converted, with what and where."""


def require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:  # optional dependency: only export/import need it
        raise ImportError("converting to/from the diffusers format needs the `diffusers` package: "
                          "pip install 'ldm[diffusers]' (or pip install diffusers)") from exc
    return diffusers


class Component:
    """One diffusers/transformers component: its class, config and a converter from our keys.

    ``ours`` is our module's state dict (the keys the converter reads); ``convert`` maps it to
    the component's state dict; ``split``/``merge`` are an optional pair applied after the
    probe-invertible ``convert`` (the fused-qkv split).
    """

    def __init__(self, library: str, cls: str, config: dict, ours: Mapping[str, torch.Tensor],
                 convert: Converter, split: Optional[Converter] = None, merge: Optional[Converter] = None,
                 derived: tuple[str, ...] = ()):
        self.library, self.cls, self.config = library, cls, config
        self.ours, self.convert = ours, convert
        self.split, self.merge = split, merge
        self.derived = derived  # our buffers that follow from the config (not stored by the component)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The component's weights, after checking that every one of ours was converted once."""
        self.mapping()  # raises if a key is dropped or duplicated
        out = self.convert(self.ours)
        return self.split(out) if self.split else out

    def mapping(self) -> dict[str, str]:
        """{their key: our key} for the probe-invertible part, from a zero-memory probe."""
        keys = list(self.ours)
        probe = {k: torch.tensor(float(i), dtype=torch.float64).expand(v.shape)  # no memory: a broadcast scalar
                 for i, (k, v) in enumerate(self.ours.items())}
        out = self.convert(probe)
        mapping, used = {}, set()
        for theirs, v in out.items():
            lo, hi = (float(v.amin()), float(v.amax())) if v.numel() else (-1.0, -1.0)
            if lo != hi or lo != int(lo) or not 0 <= lo < len(keys):
                raise ConversionError(f"{self.cls}: converted tensor {theirs!r} does not come from exactly one of ours")
            ours = keys[int(lo)]
            if ours in used:
                raise ConversionError(f"{self.cls}: our tensor {ours!r} maps to two of theirs")
            used.add(ours)
            mapping[theirs] = ours
        dropped = [k for k in keys if k not in used and k not in self.derived]
        if dropped:
            raise ConversionError(f"{self.cls}: the conversion has no place for our tensor {dropped[0]!r} "
                                  f"({len(dropped)} dropped); this architecture option is not supported")
        return mapping

    def build(self, dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
        """The diffusers/transformers module with our weights loaded strictly."""
        module = _component_class(self.library, self.cls)
        if self.library == "transformers" or self.cls == "LDMBertModel":  # transformers-style models
            model = module(module.config_class(**self.config))
        else:
            model = module(**self.config)
        sd = self.state_dict()
        expected = model.state_dict()
        for key, value in expected.items():  # buffers the original layout has no copy of
            if key not in sd and key.endswith("position_ids"):
                sd[key] = value
        model.load_state_dict(sd, strict=True)
        model.eval()
        return model if dtype in (None, torch.float32) else model.to(dtype)


def _component_class(library: str, cls: str) -> Any:
    if library == "transformers":
        import transformers

        return getattr(transformers, cls)
    if cls == "LDMBertModel":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel

        return LDMBertModel
    return getattr(require_diffusers(), cls)


def from_diffusers(component: Component, theirs: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Our state dict from the component's weights ``theirs`` (read from ``where``), exactly.

    Shapes must fit the config that built ``component``: the first tensor that does not is an
    error naming it."""
    theirs = dict(theirs)
    if component.merge is not None:
        theirs = component.merge(theirs)
    mapping = component.mapping()
    extra = sorted(set(theirs) - set(mapping) - {k for k in theirs if k.endswith("position_ids")})
    order = {k: i for i, k in enumerate(component.ours)}  # report in our model's order
    missing = sorted((k for k in mapping if k not in theirs), key=lambda k: order[mapping[k]])
    if missing:
        raise ConversionError(f"{where}: the config expects tensor {missing[0]!r}, which the folder lacks "
                              f"({len(missing)} missing)")
    if extra:
        raise ConversionError(f"{where}: tensor {extra[0]!r} has no place in the config's model "
                              f"({len(extra)} unexpected); is --config the model this folder came from?")
    out = {}
    for their_key, our_key in sorted(mapping.items(), key=lambda kv: order[kv[1]]):
        value, want = theirs[their_key], component.ours[our_key]
        if value.numel() != want.numel() or value.squeeze().shape != want.squeeze().shape:
            raise ConversionError(f"{where}: tensor {their_key!r} has shape {tuple(value.shape)}, but the config's "
                                  f"{our_key!r} needs {tuple(want.shape)}")
        out[our_key] = value.reshape(want.shape).to(want.dtype)
    for key in component.derived:
        out[key] = component.ours[key].clone()
    return out


# -- UNet ----------------------------------------------------------------------------------------------
def _heads(params: Mapping[str, Any], channels: int) -> int:
    """Attention heads at a level of ``channels`` (our UNetModel's rule)."""
    nhc = params.get("num_head_channels", -1)
    return params.get("num_heads", -1) if nhc in (-1, None) else channels // nhc


def _check_unet(params: Mapping[str, Any], where: str) -> None:
    for key, bad in (("dims", lambda v: v != 2), ("resblock_updown", bool), ("use_new_attention_order", bool),
                     ("num_attention_blocks", lambda v: v is not None), ("n_embed", lambda v: v is not None),
                     ("disable_middle_self_attn", bool), ("conv_resample", lambda v: v is False)):
        if key in params and bad(params[key]):
            raise ConversionError(f"{where}.{key}={params[key]!r} has no counterpart in diffusers' UNets")
    if not isinstance(params.get("num_res_blocks"), int):
        raise ConversionError(f"{where}.num_res_blocks must be one int for diffusers' UNets, "
                              f"got {params.get('num_res_blocks')!r}")


def _block_types(params: Mapping[str, Any], attn: str) -> tuple[list[str], list[str]]:
    levels = len(params["channel_mult"])
    att = [2 ** i in params["attention_resolutions"] for i in range(levels)]
    down = [f"{attn}DownBlock2D" if a else "DownBlock2D" for a in att]
    up = [f"{attn}UpBlock2D" if a else "UpBlock2D" for a in reversed(att)]
    return down, up


def _ldm_unet_converter(config: Mapping[str, Any]) -> Converter:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    def convert(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        checkpoint = {"model.diffusion_model." + k: v for k, v in sd.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert_ldm_unet_checkpoint(checkpoint, dict(config))
    return convert


def unet_component(unet: torch.nn.Module, params: Mapping[str, Any], where: str = "unet_config.params") -> Component:
    """Our UNetModel as ``UNet2DConditionModel`` (spatial transformers) or ``UNet2DModel``."""
    require_diffusers()
    params = dict(params)
    _check_unet(params, where)
    sd = unet.state_dict()
    channels = [params["model_channels"] * m for m in params["channel_mult"]]
    if params.get("use_spatial_transformer"):
        from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

        original = {"model": {"params": {"unet_config": {"params": copy.deepcopy(params)},
                                         "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1]}}}}}}
        original["model"]["params"]["unet_config"]["params"].setdefault("transformer_depth", 1)
        original["model"]["params"]["unet_config"]["params"].setdefault("context_dim", None)
        checkpoint = {"model.diffusion_model." + k: v for k, v in sd.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = create_unet_diffusers_config_from_ldm(original, checkpoint)
        config["sample_size"] = params["image_size"]
        # heads per level by our rule (diffusers' helper reads only num_heads)
        config["attention_head_dim"] = [_heads(params, c) for c in channels]
        if params.get("use_scale_shift_norm"):
            config["resnet_time_scale_shift"] = "scale_shift"
        return Component("diffusers", "UNet2DConditionModel", config, sd, _ldm_unet_converter(config))

    attended = [c for i, c in enumerate(channels) if 2 ** i in params["attention_resolutions"]] + channels[-1:]
    heads = {c // _heads(params, c) for c in attended}  # the middle block attends at the last level
    if len(heads) != 1:
        raise ConversionError(f"{where}: UNet2DModel needs one width per attention head at every level; "
                              "set num_head_channels instead of num_heads")
    head_dim = heads.pop()
    down, up = _block_types(params, "Attn")
    config = dict(sample_size=params["image_size"], in_channels=params["in_channels"],
                  out_channels=params["out_channels"], block_out_channels=channels,
                  layers_per_block=params["num_res_blocks"], down_block_types=down, up_block_types=up,
                  attention_head_dim=head_dim, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True,
                  freq_shift=0, downsample_padding=1, act_fn="silu",
                  resnet_time_scale_shift="scale_shift" if params.get("use_scale_shift_norm") else "default")
    if isinstance(params.get("num_classes"), int):
        config["num_class_embeds"] = params["num_classes"]
    base = _ldm_unet_converter({"layers_per_block": params["num_res_blocks"]})

    def convert(sd_: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _rename_attention_block(base(sd_))

    return Component("diffusers", "UNet2DModel", config, sd, convert,
                     split=lambda s: _split_qkv(s, head_dim), merge=lambda s: _merge_qkv(s, head_dim))


_ATTN = re.compile(r"^(.*\.attentions\.\d+\.)(norm|proj_out|qkv)\.(weight|bias)$")


def _rename_attention_block(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AttentionBlock names -> diffusers Attention names; the fused qkv keeps one key for now."""
    out = {}
    for key, value in sd.items():
        m = _ATTN.match(key)
        if m is None:
            out[key] = value
        elif m[2] == "norm":
            out[f"{m[1]}group_norm.{m[3]}"] = value
        elif m[2] == "proj_out":
            out[f"{m[1]}to_out.0.{m[3]}"] = value.reshape(value.shape[:2]) if m[3] == "weight" else value
        else:
            out[f"{m[1]}qkv.{m[3]}"] = value.reshape(value.shape[:2]) if m[3] == "weight" else value
    return out


def _split_qkv(sd: dict[str, torch.Tensor], head_dim: int) -> dict[str, torch.Tensor]:
    """The legacy fused qkv is laid out per head as [head][q|k|v][channel]; diffusers wants q, k
    and v each as [head][channel]."""
    out = {}
    for key, value in sd.items():
        prefix, sep, param = key.rpartition(".qkv.")
        if not sep:
            out[key] = value
            continue
        c = value.shape[0] // 3
        per_head = value.reshape(c // head_dim, 3, head_dim, *value.shape[1:])
        for j, name in enumerate(("to_q", "to_k", "to_v")):
            out[f"{prefix}.{name}.{param}"] = per_head[:, j].reshape(c, *value.shape[1:]).clone()
    return out


def _merge_qkv(sd: dict[str, torch.Tensor], head_dim: int) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in sd.items() if not re.search(r"\.attentions\.\d+\.to_[qkv]\.", k)}
    for key, q in sd.items():
        m = re.match(r"^(.*\.attentions\.\d+)\.to_q\.(weight|bias)$", key)
        if m is None:
            continue
        parts = [sd.get(f"{m[1]}.to_{n}.{m[2]}") for n in "qkv"]
        if any(p is None for p in parts) or len({tuple(p.shape) for p in parts}) != 1:
            raise ConversionError(f"{m[1]}: to_q/to_k/to_v.{m[2]} missing or of different shapes")
        c = q.shape[0]
        stacked = torch.stack([p.reshape(c // head_dim, head_dim, *q.shape[1:]) for p in parts], dim=1)
        out[f"{m[1]}.qkv.{m[2]}"] = stacked.reshape(3 * c, *q.shape[1:])
    return out


# -- first stage -----------------------------------------------------------------------------------------
def first_stage_component(model: torch.nn.Module, params: Mapping[str, Any], scaling_factor: float,
                          where: str = "first_stage_config.params") -> Component:
    """Our AutoencoderKL as diffusers' ``AutoencoderKL``, our VQModel as ``VQModel``."""
    require_diffusers()
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    dd = dict(params["ddconfig"])
    if params.get("residual_shortcut"):
        raise ConversionError(f"{where}.residual_shortcut: diffusers' autoencoders have no pixel-latent shortcut; "
                              "the converted model would decode wrongly")
    if dd.get("attn_resolutions"):
        raise ConversionError(f"{where}.ddconfig.attn_resolutions={list(dd['attn_resolutions'])}: diffusers' "
                              "autoencoders attend only in the middle block; only [] converts")
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("loss.", "model_ema."))}
    original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": dd}}}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_vae_diffusers_config_from_ldm(original, sd, image_size=dd["resolution"],
                                                      scaling_factor=float(scaling_factor))
    config["sample_size"] = dd["resolution"]

    def convert(sd_: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = convert_ldm_vae_checkpoint(dict(sd_), config)
        if "quantize.embedding.weight" in sd_:  # the codebook keeps its key in both layouts
            out["quantize.embedding.weight"] = sd_["quantize.embedding.weight"]
        return out

    if "quantize.embedding.weight" in sd:
        if params.get("remap"):
            raise ConversionError(f"{where}.remap: diffusers' VQModel has no index remapping")
        config = dict(config, num_vq_embeddings=int(params["n_embed"]), vq_embed_dim=int(params["embed_dim"]),
                      norm_num_groups=32)
        return Component("diffusers", "VQModel", config, sd, convert)
    if int(params["embed_dim"]) != int(dd["z_channels"]):
        raise ConversionError(f"{where}.embed_dim={params['embed_dim']} differs from ddconfig.z_channels="
                              f"{dd['z_channels']}; diffusers' AutoencoderKL needs them equal")
    return Component("diffusers", "AutoencoderKL", config, sd, convert)


# -- text encoders ---------------------------------------------------------------------------------------
def clip_component(encoder: torch.nn.Module, special_ids: Optional[Mapping[str, int]] = None) -> Component:
    """FrozenCLIPEmbedder's text transformer as transformers' ``CLIPTextModel``: the same names,
    with or without the ``text_model.`` level as the installed transformers has it."""
    import transformers

    cfg = encoder.transformer.config
    sd = encoder.transformer.state_dict()
    # CLIP's vocabulary ends with <|startoftext|> <|endoftext|>; padding is <|endoftext|>
    ids = {"bos_token_id": cfg.vocab_size - 2, "eos_token_id": cfg.vocab_size - 1, "pad_token_id": cfg.vocab_size - 1}
    config = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.width, num_hidden_layers=cfg.layers,
                  num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_width,
                  max_position_embeddings=cfg.max_length, layer_norm_eps=cfg.layer_norm_eps, hidden_act="quick_gelu",
                  projection_dim=cfg.width, **{**ids, **dict(special_ids or {})})
    with torch.device("meta"):
        theirs = set(transformers.CLIPTextModel(transformers.CLIPTextConfig(**config)).state_dict())
    prefixed = any(k.startswith("text_model.") for k in theirs)

    def convert(sd_: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {(k if prefixed else k.removeprefix("text_model.")): v for k, v in sd_.items()}
        return {k: v for k, v in out.items() if k in theirs}

    derived = tuple(k for k in sd if k.endswith("position_ids"))
    return Component("transformers", "CLIPTextModel", config, sd, convert, derived=derived)


_BERT_LAYER = re.compile(r"^transformer\.attn_layers\.layers\.(\d+)\.(\d)\.(.+)$")
_BERT_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj",
               "net.0.0": "fc1", "net.2": "fc2"}


def bert_component(encoder: torch.nn.Module) -> Component:
    """BERTEmbedder's x-transformer encoder as diffusers' ``LDMBertModel``: both are pre-norm
    encoders with bias-free q/k/v, a GELU MLP of 4x width and learned absolute positions."""
    t = encoder.transformer
    layers = t.attn_layers
    n_layer = len(layers.layers) // 2
    attn = layers.layers[0][1]
    width = t.token_emb.weight.shape[1]
    if t.pos_emb is None or not isinstance(t.project_emb, torch.nn.Identity):
        raise ConversionError("cond_stage_config: this BERT encoder's embedding layout has no LDMBert counterpart")
    config = dict(vocab_size=t.token_emb.weight.shape[0], max_position_embeddings=t.pos_emb.emb.weight.shape[0],
                  encoder_layers=n_layer, encoder_ffn_dim=layers.layers[1][1].net[2].weight.shape[1],
                  encoder_attention_heads=attn.heads, head_dim=attn.to_q.weight.shape[0] // attn.heads,
                  d_model=width, dropout=0.0, pad_token_id=0)
    sd = encoder.state_dict()

    def convert(sd_: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in sd_.items():
            if key.startswith("tknz_fn."):
                continue
            m = _BERT_LAYER.match(key)
            if m is None:
                name = {"transformer.token_emb.weight": "model.embed_tokens.weight",
                        "transformer.pos_emb.emb.weight": "model.embed_positions.weight"}.get(key)
                if name is None and key.startswith("transformer.norm."):
                    name = "model.layer_norm." + key.rsplit(".", 1)[1]
                if name is None and key.startswith("transformer.to_logits."):
                    name = "to_logits." + key.rsplit(".", 1)[1]
                if name is not None:
                    out[name] = value
                continue
            index, part, rest = int(m[1]), m[2], m[3]
            layer, is_ff = index // 2, index % 2 == 1
            if part == "0":
                norm = "final_layer_norm" if is_ff else "self_attn_layer_norm"
                out[f"model.layers.{layer}.{norm}.{rest}"] = value
            else:
                stem, param = rest.rsplit(".", 1)
                name = _BERT_NAMES.get(stem)
                if name is not None:
                    out[f"model.layers.{layer}.{'' if is_ff else 'self_attn.'}{name}.{param}"] = value
        return out

    return Component("diffusers", "LDMBertModel", config, sd, convert)
