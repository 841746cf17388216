"""Cross-attention conditioning of the UNet (paper Sec. 3.3, Fig. 3).

A ``SpatialTransformer`` flattens a feature map phi_i(z_t) to N tokens, runs transformer blocks
whose cross-attention layers read the conditioning tau_theta(y) (M tokens), and adds the result
back to the feature map. All attention goes through ``F.scaled_dot_product_attention``, which
computes softmax(Q K^T / sqrt(d)) V without materialising the N x M score matrix when a fused
kernel is available.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.util import checkpoint, zero_module

__all__ = [
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "GEGLU",
    "LinearAttention",
    "Normalize",
    "SpatialTransformer",
]


def Normalize(in_channels: int) -> nn.GroupNorm:
    """GroupNorm of the transformer input (eps 1e-6, as in the original)."""
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class GEGLU(nn.Module):
    """GELU-gated linear unit: one projection yields the value and its gate."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: float = 4,
        glu: bool = False,      # GEGLU instead of Linear + GELU
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = dim if dim_out is None else dim_out
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossAttention(nn.Module):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V with Q = W_Q phi(z), K = W_K tau(y),
    V = W_V tau(y) (Sec. 3.3); without a context it is self-attention on phi(z)."""

    def __init__(
        self,
        query_dim: int,               # channels of the flattened feature map
        context_dim: int | None = None,  # width of tau_theta(y); None: self-attention
        heads: int = 8,
        dim_head: int = 64,           # d in softmax(QK^T / sqrt(d))
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(
        self,
        x: torch.Tensor,                      # (B, N, query_dim)
        context: torch.Tensor | None = None,  # (B, M, context_dim)
        mask: torch.Tensor | None = None,     # (B, M...) bool, True = attend
    ) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        h = self.heads
        # (B, L, h*d) -> (B, h, L, d) as strided views; the kernel handles the layout.
        q = self.to_q(x).unflatten(-1, (h, -1)).transpose(1, 2)
        k = self.to_k(context).unflatten(-1, (h, -1)).transpose(1, 2)
        v = self.to_v(context).unflatten(-1, (h, -1)).transpose(1, 2)
        attn_mask = None
        if mask is not None:
            attn_mask = mask.reshape(mask.shape[0], 1, 1, -1).to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention on the context, gated feed-forward; pre-norm residuals."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        gated_ff: bool = True,
        checkpoint: bool = True,          # recompute activations in backward
        disable_self_attn: bool = False,  # attn1 also attends to the context
    ) -> None:
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(
            query_dim=dim,
            context_dim=context_dim if disable_self_attn else None,
            heads=n_heads,
            dim_head=d_head,
            dropout=dropout,
        )
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = CrossAttention(
            query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), context=context if self.disable_self_attn else None) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned by cross-attention (Fig. 3).

    norm -> proj_in (1x1 conv, or linear with ``use_linear``) -> ``depth`` transformer blocks on
    the (H*W) tokens -> proj_out (zero-initialised, so the block starts as identity) -> residual.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | Sequence[int] | None = None,  # one width, or one per block
        disable_self_attn: bool = False,
        use_linear: bool = False,       # linear projections (SD-2 use_linear_in_transformer)
        use_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        if context_dim is None or isinstance(context_dim, int):
            context_dims = [context_dim] * depth
        else:
            context_dims = list(context_dim)
            if len(context_dims) == 1:
                context_dims = context_dims * depth
            if len(context_dims) != depth:
                raise ValueError(
                    f"SpatialTransformer: context_dim has {len(context_dims)} entries, expected 1 or depth={depth}"
                )
        self.in_channels = in_channels
        self.use_linear = use_linear
        inner_dim = n_heads * d_head
        self.norm = Normalize(in_channels)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                n_heads,
                d_head,
                dropout=dropout,
                context_dim=context_dims[d],
                checkpoint=use_checkpoint,
                disable_self_attn=disable_self_attn,
            )
            for d in range(depth)
        )
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(
        self,
        x: torch.Tensor,  # (B, C, H, W)
        context: torch.Tensor | Sequence[torch.Tensor] | None = None,  # one, or one per block
    ) -> torch.Tensor:
        if isinstance(context, (list, tuple)):
            if len(context) == 1:
                contexts = list(context) * len(self.transformer_blocks)
            elif len(context) == len(self.transformer_blocks):
                contexts = list(context)
            else:
                raise ValueError(
                    f"SpatialTransformer: got {len(context)} contexts for {len(self.transformer_blocks)} blocks"
                )
        else:
            contexts = [context] * len(self.transformer_blocks)
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        if self.use_linear:
            x = self.proj_in(x)
        for block, ctx in zip(self.transformer_blocks, contexts):
            x = block(x, context=ctx)
        if self.use_linear:
            x = self.proj_out(x)
        # Back to a map in the input's memory format: the bare view is laid out channels-last, which
        # every later NCHW convolution would follow by converting its weights, a copy per call.
        channels_last = x_in.is_contiguous(memory_format=torch.channels_last) and not x_in.is_contiguous()
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class LinearAttention(nn.Module):
    """Linear attention over pixels (softmax over keys first, then K^T V); used by the
    autoencoder's ``attn_type="linear"``. Keys: to_qkv (1x1 conv), to_out (1x1 conv)."""

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        dim_head: int = 32,
    ) -> None:
        super().__init__()
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # (B, 3*heads*d, H, W) -> three (B, heads, d, H*W), q/k/v-major as in the original layout
        q, k, v = self.to_qkv(x).reshape(b, 3, self.heads, -1, h * w).unbind(1)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))
