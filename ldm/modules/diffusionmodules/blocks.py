"""Layers of the time-conditional UNet eps_theta(z_t, t, y) (paper Sec. 3.2-3.3).

Residual blocks take the timestep embedding, spatial transformers take the conditioning
tau_theta(y); ``TimestepEmbedSequential`` routes each input to the layers that need it. These are
re-exported from ``ldm.modules.diffusionmodules.openaimodel``, their original import path.
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.util import avg_pool_nd, checkpoint, conv_nd, linear, normalization, zero_module

__all__ = [
    "AttentionBlock",
    "Downsample",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "Upsample",
]


class TimestepBlock(nn.Module, abc.ABC):
    """A module whose forward takes the timestep embedding as a second argument."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` given the timestep embedding ``emb``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that passes ``emb`` to timestep blocks and ``context`` to spatial transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class _Resample(nn.Module, abc.ABC):
    """2x resampling of the last two dims (so 3D inputs keep their first spatial dim).

    Upsample and Downsample share their arguments and input check; each builds its own layers
    under the original key (``conv`` resp. ``op``).
    """

    def __init__(
        self,
        channels: int,
        use_conv: bool,                   # resample with a learned 3x3 conv
        dims: int = 2,
        out_channels: int | None = None,  # default: channels
        padding: int = 1,                 # padding of the 3x3 conv
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        self._build(padding)

    @abc.abstractmethod
    def _build(self, padding: int) -> None:
        """Create the resampling layers from the attributes set by ``__init__``."""

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__}: expected {self.channels} input channels, got {x.shape[1]}")


class Upsample(_Resample):
    """Nearest-neighbour 2x upsampling (the inner two dims for 3D), optionally followed by a conv."""

    def _build(self, padding: int) -> None:
        if self.use_conv:
            self.conv = conv_nd(self.dims, self.channels, self.out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(_Resample):
    """2x downsampling by a strided 3x3 conv or average pooling (inner two dims for 3D)."""

    def _build(self, padding: int) -> None:
        stride = 2 if self.dims != 3 else (1, 2, 2)
        if self.use_conv:
            self.op = conv_nd(self.dims, self.channels, self.out_channels, 3, stride=stride, padding=padding)
        else:
            if self.channels != self.out_channels:
                raise ValueError(f"Downsample: pooling cannot change channels ({self.channels} -> "
                                 f"{self.out_channels}); set use_conv=True")
            self.op = avg_pool_nd(self.dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding.

    h = conv(SiLU(norm(x))); the embedding is added to h, or with ``use_scale_shift_norm``
    applied as FiLM: norm(h) * (1 + scale) + shift; then SiLU, dropout, zero-initialised conv.
    ``up``/``down`` resample both branches inside the block (BigGAN-style ``resblock_updown``).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,                # width of the timestep embedding
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,           # 3x3 instead of 1x1 conv on the skip path
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False, dims)
            self.x_upd = Upsample(channels, False, dims)
        elif down:
            self.h_upd = Downsample(channels, False, dims)
            self.x_upd = Downsample(channels, False, dims)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            # Resample between the activation and the conv, so the conv runs at the new size.
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - emb_out.ndim)))
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class _FusedQKVAttention(nn.Module):
    """Multi-head attention on a fused qkv tensor (N, 3*H*C, T); subclasses fix the channel order."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def _sizes(self, qkv: torch.Tensor) -> tuple[int, int, int]:
        """(batch N, channels per head C, length T) of ``qkv``."""
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"{type(self).__name__}: width {width} is not divisible by "
                             f"3*n_heads={3 * self.n_heads}")
        return bs, width // (3 * self.n_heads), length


class QKVAttentionLegacy(_FusedQKVAttention):
    """Channels ordered [head][q|k|v][channel]: (N, H*3*C, T), the original per-head layout.

    Released checkpoints trained with this block depend on that order.
    """

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, ch, length = self._sizes(qkv)
        q, k, v = qkv.view(bs, self.n_heads, 3, ch, length).transpose(-1, -2).contiguous().unbind(2)
        return _attend(q, k, v, bs, length)


class QKVAttention(_FusedQKVAttention):
    """Channels ordered [q|k|v][head][channel]: (N, 3*H*C, T) (``use_new_attention_order``)."""

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, ch, length = self._sizes(qkv)
        q, k, v = qkv.view(bs, 3, self.n_heads, ch, length).transpose(-1, -2).contiguous().unbind(1)
        return _attend(q, k, v, bs, length)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bs: int, length: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(C)) v on (N, H, T, C) views; returns (N, H*C, T).

    The fused qkv is channel-major (T contiguous); fused attention kernels need the head
    dimension C contiguous, so the callers make one copy of the whole qkv, not three.
    """
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(-1, -2).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions (the UNet attention of the pixel-space DMs)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,    # if set, overrides num_heads = channels // num_head_channels
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,  # q/k/v-major qkv layout instead of per-head
    ) -> None:
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"AttentionBlock: channels {channels} not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads) if use_new_attention_order else QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)
