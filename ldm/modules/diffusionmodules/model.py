"""Convolutional encoder E and decoder D of the first-stage autoencoder (paper Sec. 3.1).

E maps x in R^{H x W x 3} to z in R^{h x w x c} with f = H/h = 2^(len(ch_mult) - 1); D maps back.
The layout (module names, nesting, channel schedule) matches the original so released
first-stage checkpoints load with strict key checking: `down.{i}.block.{j}`, `down.{i}.attn.{j}`,
`down.{i}.downsample`, `mid.block_1/attn_1/block_2`, `up.{i}.*`, `norm_out`, `conv_out`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import LinearAttention

__all__ = [
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "Normalize",
    "ResnetBlock",
    "Upsample",
    "make_attn",
    "nonlinearity",
]

ATTN_TYPES = ("vanilla", "vanilla-xformers", "linear", "none")


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU."""
    return F.silu(x)


def Normalize(in_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


class _Resample(nn.Module):
    """x2 resampling with an optional 3x3 conv under the original key ``conv``."""

    conv_stride: int = 1
    conv_padding: int = 1

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=self.conv_stride,
                                  padding=self.conv_padding)


class Upsample(_Resample):
    """Nearest-neighbour x2, then an optional 3x3 conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(_Resample):
    """Stride-2 3x3 conv with asymmetric (right/bottom) zero padding, or 2x2 average pooling."""

    conv_stride = 2
    conv_padding = 0  # padded in forward, on one side only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            # Pad only right and bottom so that H, W halve exactly, as the released weights expect.
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv, twice, plus a (1x1 or 3x3) shortcut when channels change."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: Optional[int] = None,
        conv_shortcut: bool = False,  # 3x3 shortcut conv instead of 1x1 when channels change
        dropout: float = 0.0,
        temb_channels: int = 512,     # 0 disables the timestep projection (first stage uses 0)
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, with a residual connection.

    q, k, v and proj_out are 1x1 convs (the original's keys); the attention itself runs through
    scaled_dot_product_attention (scale 1/sqrt(C), as in the original), which picks a fused kernel
    where one exists.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, height, width = h.shape
        # (B, C, H, W) -> (B, 1 head, H*W tokens, C), made contiguous: with transposed views the CPU
        # kernel ran ~1.2x slower than the explicit softmax formula (docs/benchmarks.md)
        q, k, v = (t.reshape(b, 1, c, height * width).transpose(2, 3).contiguous()
                   for t in (self.q(h), self.k(h), self.v(h)))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(2, 3).reshape(b, c, height, width)
        return x + self.proj_out(h)


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """Attention block by name: "vanilla" (softmax, AttnBlock), "linear" or "none" (identity).

    "vanilla-xformers" is accepted as an alias of "vanilla": same weights, and the SDPA kernel
    already is the memory-efficient path.
    """
    if attn_type in ("vanilla", "vanilla-xformers"):
        return AttnBlock(in_channels)
    if attn_type == "none":
        return nn.Identity()
    if attn_type == "linear":
        return LinearAttention(dim=in_channels, heads=1, dim_head=in_channels)
    raise ValueError(f"attn_type={attn_type!r} is not supported; choose one of {ATTN_TYPES}")


def _check_attn_type(attn_type: str, use_linear_attn: bool) -> str:
    attn_type = "linear" if use_linear_attn else attn_type
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"attn_type={attn_type!r} is not supported; choose one of {ATTN_TYPES}")
    return attn_type


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (one after each block, or none), and
    an optional `downsample`/`upsample` set by the caller."""

    def __init__(
        self,
        block_in: int,      # channels entering the first block
        block_out: int,     # channels of every block's output
        num_blocks: int,
        with_attn: bool,    # this level's resolution is in attn_resolutions
        dropout: float,
        attn_type: str,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for j in range(num_blocks):  # created interleaved, as the original, so seeded inits match it
            self.block.append(ResnetBlock(in_channels=block_in if j == 0 else block_out, out_channels=block_out,
                                          temb_channels=0, dropout=dropout))
            if with_attn:
                self.attn.append(make_attn(block_out, attn_type=attn_type))


class _Mid(nn.Module):
    """Bottleneck: ResnetBlock -> attention -> ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, attn_type: str) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(in_channels=channels, out_channels=channels, temb_channels=0, dropout=dropout)
        self.attn_1 = make_attn(channels, attn_type=attn_type)
        self.block_2 = ResnetBlock(in_channels=channels, out_channels=channels, temb_channels=0, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _run_level(level: _Level, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class _Coder(nn.Module):
    """The size attributes Encoder and Decoder share (the original's names)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, resolution: int, in_channels: int):
        super().__init__()
        self.ch = ch
        self.temb_ch = 0  # the first stage has no timestep embedding
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels


class Encoder(_Coder):
    """E: image (B, in_channels, H, W) -> (B, z_channels * (2 if double_z else 1), H/f, W/f).

    With double_z the output holds the mean and log-variance of the KL-regularised posterior.
    """

    def __init__(
        self,
        *,
        ch: int,                               # base channel count
        out_ch: int,                           # image channels produced by the decoder (unused here)
        ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per level; f = 2^(len - 1)
        num_res_blocks: int,                   # ResnetBlocks per level
        attn_resolutions: Sequence[int],       # feature-map sizes (pixels) that get self-attention
        dropout: float = 0.0,
        resamp_with_conv: bool = True,         # strided conv (True) or average pooling (False)
        in_channels: int,                      # image channels
        resolution: int,                       # nominal image size; only fixes where attention sits
        z_channels: int,                       # latent channels c
        double_z: bool = True,                 # output mean and log-variance (KL) or a single z (VQ)
        use_linear_attn: bool = False,         # legacy switch for attn_type="linear"
        attn_type: str = "vanilla",            # "vanilla", "linear" or "none"
        give_pre_end: bool = False,            # decoder-only option of the shared ddconfig (unused)
        tanh_out: bool = False,                # decoder-only option of the shared ddconfig (unused)
    ):
        super().__init__(ch, ch_mult, num_res_blocks, resolution, in_channels)
        attn_type = _check_attn_type(attn_type, use_linear_attn)

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.in_ch_mult = in_ch_mult
        curr_res = resolution
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            level = _Level(block_in, block_out, num_res_blocks, curr_res in attn_resolutions, dropout, attn_type)
            block_in = block_out
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in, resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(level)

        self.mid = _Mid(block_in, dropout, attn_type)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels,
                                  kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level, level in enumerate(self.down):
            h = _run_level(level, h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(_Coder):
    """D: latent (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f)."""

    def __init__(
        self,
        *,
        ch: int,                               # base channel count
        out_ch: int,                           # image channels produced
        ch_mult: Sequence[int] = (1, 2, 4, 8),  # channel multiplier per level; f = 2^(len - 1)
        num_res_blocks: int,                   # ResnetBlocks per level (the decoder uses one more)
        attn_resolutions: Sequence[int],       # feature-map sizes (pixels) that get self-attention
        dropout: float = 0.0,
        resamp_with_conv: bool = True,         # conv after nearest upsampling
        in_channels: int,                      # image channels of the encoder (unused here)
        resolution: int,                       # nominal image size; only fixes where attention sits
        z_channels: int,                       # latent channels c
        give_pre_end: bool = False,            # return features before norm_out/conv_out
        tanh_out: bool = False,                # squash the output with tanh
        use_linear_attn: bool = False,         # legacy switch for attn_type="linear"
        attn_type: str = "vanilla",            # "vanilla", "linear" or "none"
        double_z: bool = True,                 # encoder-only option of the shared ddconfig (unused)
    ):
        super().__init__(ch, ch_mult, num_res_blocks, resolution, in_channels)
        attn_type = _check_attn_type(attn_type, use_linear_attn)
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, dropout, attn_type)

        levels: list[_Level] = []
        for i_level in reversed(range(self.num_resolutions)):
            block_out = ch * ch_mult[i_level]
            level = _Level(block_in, block_out, num_res_blocks + 1, curr_res in attn_resolutions, dropout, attn_type)
            block_in = block_out
            if i_level != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            levels.insert(0, level)  # keep `up.{i}` indexed by resolution level, as the checkpoints are
        self.up = nn.ModuleList(levels)

        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.mid(self.conv_in(z))
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            h = _run_level(level, h)
            if i_level != 0:
                h = level.upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(nonlinearity(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h
