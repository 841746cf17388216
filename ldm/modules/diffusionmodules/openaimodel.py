"""The denoiser eps_theta(z_t, t, y): a time-conditional UNet (paper Sec. 3.2, Eq. 2-3).

Conditioning enters three ways (Sec. 3.3, Fig. 3): channel concatenation to ``x`` (done by the
caller), cross-attention on ``context`` = tau_theta(y) in ``SpatialTransformer`` layers, and a
class embedding ``label_emb`` added to the timestep embedding. Module names and nesting follow
the original so released checkpoints load with strict key checking.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.blocks import (
    AttentionBlock,
    Downsample,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    TimestepBlock,
    TimestepEmbedSequential,
    Upsample,
)
from ldm.modules.diffusionmodules.util import conv_nd, linear, normalization, timestep_embedding, zero_module

__all__ = [
    "AttentionBlock",
    "Downsample",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
    "convert_module_to_f16",
    "convert_module_to_f32",
]


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast the weights of a convolution to float16 (norms and embeddings stay float32)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo :func:`convert_module_to_f16`."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


def _per_level(value: int | Sequence[int], levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    value = list(value)
    if len(value) != levels:
        raise ValueError(f"{name} has {len(value)} entries but channel_mult has {levels} levels")
    return value


def _down_path(
    in_channels: int,
    model_channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: list[int],
    attention_resolutions: Sequence[int],
    dropout: float,
    time_embed_dim: int,
    dims: int,
    use_checkpoint: bool,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    conv_resample: bool,
    make_attention: Callable[[int, int, int], nn.Module | None],  # (ch, level, index) -> layer
) -> tuple[nn.ModuleList, list[int], int, int]:
    """The encoder half: per level ``num_res_blocks`` ResBlocks (each followed by attention at
    the resolutions listed, as downsampling factor ds), then a 2x downsampling except at the last
    level. Returns the blocks, the channels of each skip connection, final channels and ds."""
    blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))])
    chans = [model_channels]
    ch, ds = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for nr in range(num_res_blocks[level]):
            layers: list[nn.Module] = [ResBlock(
                ch, time_embed_dim, dropout, out_channels=mult * model_channels, dims=dims,
                use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
            )]
            ch = mult * model_channels
            if ds in attention_resolutions:
                attn = make_attention(ch, level, nr)
                if attn is not None:
                    layers.append(attn)
            blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            if resblock_updown:
                down: nn.Module = ResBlock(
                    ch, time_embed_dim, dropout, out_channels=ch, dims=dims, use_checkpoint=use_checkpoint,
                    use_scale_shift_norm=use_scale_shift_norm, down=True,
                )
            else:
                down = Downsample(ch, conv_resample, dims=dims, out_channels=ch)
            blocks.append(TimestepEmbedSequential(down))
            chans.append(ch)
            ds *= 2
    return blocks, chans, ch, ds


class UNetModel(nn.Module):
    """The full UNet with timestep embedding, optional class embedding and cross-attention."""

    def __init__(
        self,
        image_size: int | Sequence[int],       # informational: spatial size of the latents
        in_channels: int,                      # latent channels (+ concatenated conditioning)
        model_channels: int,                   # base width; level i has model_channels * channel_mult[i]
        out_channels: int,
        num_res_blocks: int | Sequence[int],   # ResBlocks per level (one int or one per level)
        attention_resolutions: Sequence[int],  # downsampling factors at which to attend
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,            # learned 3x3 conv in up/downsampling
        dims: int = 2,                         # 1D, 2D or 3D signals
        num_classes: int | str | None = None,  # int: class-conditional; "continuous"/"sequential": SD-2 vectors
        use_checkpoint: bool = False,          # gradient checkpointing in every block
        checkpoint_attention: bool = True,     # recompute attention activations in backward, as the
                                               # original always did: its batch sizes fit in its memory
        use_fp16: bool = False,                # run the blocks in float16 (after convert_to_fp16())
        use_bf16: bool = False,                # run the blocks in bfloat16
        num_heads: int = -1,
        num_head_channels: int = -1,           # fixed width per head (overrides num_heads)
        num_heads_upsample: int = -1,          # heads of the decoder AttentionBlocks (-1: num_heads)
        use_scale_shift_norm: bool = False,    # FiLM conditioning on the timestep in ResBlocks
        resblock_updown: bool = False,         # resample inside ResBlocks instead of Up/Downsample
        use_new_attention_order: bool = False,  # q/k/v-major fused qkv in AttentionBlock
        use_spatial_transformer: bool = False,  # cross-attention transformers instead of AttentionBlock
        transformer_depth: int = 1,
        context_dim: int | Sequence[int] | None = None,  # width of tau_theta(y)
        n_embed: int | None = None,            # predict logits over a codebook of this size
        legacy: bool = True,                   # original head-width rule (see _heads)
        disable_self_attentions: Sequence[bool] | None = None,  # per level: attn1 attends to the context
        num_attention_blocks: Sequence[int] | None = None,      # per level: how many ResBlocks get attention
        disable_middle_self_attn: bool = False,
        use_linear_in_transformer: bool = False,  # linear proj_in/proj_out (SD-2)
        adm_in_channels: int | None = None,    # input width of the "sequential" class embedding
    ) -> None:
        super().__init__()
        if use_spatial_transformer and context_dim is None:
            raise ValueError("UNetModel: use_spatial_transformer=True needs context_dim (the width of the conditioning)")
        if context_dim is not None and not use_spatial_transformer:
            raise ValueError("UNetModel: context_dim is set but use_spatial_transformer=False; set it to True")
        if context_dim is not None and not isinstance(context_dim, int):
            context_dim = list(context_dim)
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("UNetModel: set num_heads or num_head_channels (both are -1)")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        levels = len(channel_mult)
        self.num_res_blocks = _per_level(num_res_blocks, levels, "num_res_blocks")
        if disable_self_attentions is not None:
            disable_self_attentions = _per_level_bools(disable_self_attentions, levels)
        if num_attention_blocks is not None:
            num_attention_blocks = _per_level(num_attention_blocks, levels, "num_attention_blocks")
            for level, (n_res, n_att) in enumerate(zip(self.num_res_blocks, num_attention_blocks)):
                if n_att > n_res:
                    raise ValueError(
                        f"num_attention_blocks[{level}]={n_att} exceeds num_res_blocks[{level}]={n_res}"
                    )

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.channel_mult = channel_mult
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.dtype = torch.bfloat16 if use_bf16 else torch.float16 if use_fp16 else torch.float32
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.predict_codebook_ids = n_embed is not None

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            linear(model_channels, time_embed_dim),
            nn.SiLU(),
            linear(time_embed_dim, time_embed_dim),
        )
        if num_classes is not None:
            self.label_emb = _label_embedding(num_classes, time_embed_dim, adm_in_channels)

        def heads(ch: int) -> tuple[int, int]:
            """(heads, head width) at ``ch`` channels. With ``legacy`` the head width passed on is
            ch // heads for transformers and num_head_channels (maybe -1) for AttentionBlock."""
            n_heads, dim_head = num_heads, num_head_channels
            if num_head_channels == -1:
                dim_head = ch // num_heads
            else:
                n_heads = ch // num_head_channels
            if legacy:
                dim_head = ch // n_heads if use_spatial_transformer else num_head_channels
            return n_heads, dim_head

        def attention(ch: int, level: int | None, index: int, upsample: bool = False) -> nn.Module | None:
            if level is not None and num_attention_blocks is not None and index >= num_attention_blocks[level]:
                return None
            n_heads, dim_head = heads(ch)
            if not use_spatial_transformer:
                return AttentionBlock(
                    ch,
                    num_heads=num_heads_upsample if upsample else n_heads,
                    num_head_channels=dim_head,
                    use_checkpoint=use_checkpoint or checkpoint_attention,
                    use_new_attention_order=use_new_attention_order,
                )
            if level is None:
                disabled_sa = disable_middle_self_attn
            else:
                disabled_sa = disable_self_attentions[level] if disable_self_attentions is not None else False
            return SpatialTransformer(
                ch, n_heads, dim_head, depth=transformer_depth, context_dim=context_dim,
                disable_self_attn=disabled_sa, use_linear=use_linear_in_transformer,
                use_checkpoint=use_checkpoint or checkpoint_attention,
            )

        self.input_blocks, skip_chans, ch, ds = _down_path(
            in_channels, model_channels, channel_mult, self.num_res_blocks, attention_resolutions, dropout,
            time_embed_dim, dims, use_checkpoint, use_scale_shift_norm, resblock_updown, conv_resample,
            attention,
        )
        self._feature_size = sum(skip_chans)

        def res_block(ch_in: int, ch_out: int, up: bool = False) -> ResBlock:
            return ResBlock(
                ch_in, time_embed_dim, dropout, out_channels=ch_out, dims=dims, use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm, up=up,
            )

        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), attention(ch, None, 0), res_block(ch, ch))
        self._feature_size += ch

        # Decoder: each level has one more ResBlock than the encoder, to consume the skip of the
        # downsampling layer; it then upsamples, except at the top level.
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(self.num_res_blocks[level] + 1):
                layers: list[nn.Module] = [res_block(ch + skip_chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    attn = attention(ch, level, i, upsample=True)
                    if attn is not None:
                        layers.append(attn)
                if level and i == self.num_res_blocks[level]:
                    layers.append(res_block(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1)),
        )
        if self.predict_codebook_ids:
            self.id_predictor = nn.Sequential(normalization(ch), conv_nd(dims, model_channels, n_embed, 1))

    def convert_to_fp16(self) -> None:
        """Cast the convolutions of the UNet body to float16 (set ``use_fp16`` too)."""
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            blocks.apply(convert_module_to_f16)

    def convert_to_fp32(self) -> None:
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            blocks.apply(convert_module_to_f32)

    def forward(
        self,
        x: torch.Tensor,                        # (B, C, H, W) noisy latents z_t (+ concat conditioning)
        timesteps: torch.Tensor | None = None,  # (B,) diffusion steps t
        context: torch.Tensor | Sequence[torch.Tensor] | None = None,  # (B, M, context_dim) tau_theta(y)
        y: torch.Tensor | None = None,          # (B,) class labels / (B, adm_in_channels) vectors
        **kwargs: object,                       # accepted and ignored, as in the original
    ) -> torch.Tensor:
        """Predicted noise eps_theta(z_t, t, y) (or codebook logits when ``n_embed`` is set)."""
        if timesteps is None:
            raise ValueError("UNetModel.forward: timesteps is required")
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "UNetModel.forward: pass y if and only if the model is class-conditional "
                f"(num_classes={self.num_classes!r}, y {'given' if y is not None else 'missing'})"
            )
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        if self.num_classes is not None:
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"UNetModel.forward: y has batch {y.shape[0]}, x has batch {x.shape[0]}")
            emb = emb + self.label_emb(y)

        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb, context)
        h = h.type(x.dtype)
        return self.id_predictor(h) if self.predict_codebook_ids else self.out(h)


def _per_level_bools(value: Sequence[bool], levels: int) -> list[bool]:
    value = list(value)
    if len(value) != levels:
        raise ValueError(f"disable_self_attentions has {len(value)} entries but channel_mult has {levels} levels")
    return value


def _label_embedding(num_classes: int | str, dim: int, adm_in_channels: int | None) -> nn.Module:
    if isinstance(num_classes, int):
        return nn.Embedding(num_classes, dim)
    if num_classes == "continuous":
        return nn.Linear(1, dim)
    if num_classes == "sequential":
        if adm_in_channels is None:
            raise ValueError('UNetModel: num_classes="sequential" needs adm_in_channels')
        return nn.Sequential(nn.Sequential(linear(adm_in_channels, dim), nn.SiLU(), linear(dim, dim)))
    raise ValueError(f'UNetModel: num_classes must be an int, "continuous" or "sequential", got {num_classes!r}')
