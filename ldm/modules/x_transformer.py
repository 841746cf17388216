"""The bidirectional transformer τ_θ of the BERT-conditioned LDMs (Sec. 3.3 and 4.3.1).

The released text-to-image and layout-to-image checkpoints were trained with an encoder laid out
like the x-transformers library (0.x): a token embedding plus a learned absolute position
embedding, ``depth`` pre-norm blocks of (self-attention, feed-forward), a final LayerNorm and an
unused logits head. This file implements exactly that subset, with the same parameter names, so
those checkpoints load strictly:

    token_emb.weight, pos_emb.emb.weight,
    attn_layers.layers.{2i}.0 (LayerNorm)   attn_layers.layers.{2i}.1.to_{q,k,v,out}   (attention)
    attn_layers.layers.{2i+1}.0 (LayerNorm) attn_layers.layers.{2i+1}.1.net.{0.0,2}    (feed-forward)
    norm, to_logits

Attention is unmasked by default: the original encoder attends to [PAD] tokens too, and the
released weights were trained that way.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_DIM_HEAD = 64


class AbsolutePositionalEmbedding(nn.Module):
    """Learned position embedding for positions 0..max_seq_len-1 (no scaling)."""

    def __init__(
        self,
        dim: int,  # embedding width
        max_seq_len: int,  # number of positions
    ):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Position embeddings [1, n, dim] for a sequence ``x`` of length n = x.shape[1]."""
        positions = torch.arange(x.shape[1], device=self.emb.weight.device)
        return self.emb(positions)[None]


class FeedForward(nn.Module):
    """Linear → GELU (exact, erf form) → dropout → Linear; keys ``net.0.0`` and ``net.2``."""

    def __init__(
        self,
        dim: int,  # model width
        mult: int = 4,  # hidden width = mult * dim
        dropout: float = 0.0,
    ):
        super().__init__()
        inner = int(dim * mult)
        project_in = nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention softmax(QKᵀ/√d_head)·V with bias-free q/k/v and a biased output."""

    def __init__(
        self,
        dim: int,  # model width
        heads: int = 8,
        dim_head: int = DEFAULT_DIM_HEAD,  # inner width is heads * dim_head, independent of dim
        causal: bool = False,
        dropout: float = 0.0,  # dropout on the attention weights
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``mask`` [b, n] (True = keep) masks keys and queries as in the original: a padded query
        row is fully masked and therefore attends uniformly."""
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        p = self.dropout if self.training else 0.0
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        else:
            out = self._masked_attention(q, k, v, mask, p)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

    def _masked_attention(self, q, k, v, mask: torch.Tensor, p: float) -> torch.Tensor:
        # Explicit path: SDPA turns fully masked rows into NaN, the original into a uniform row.
        dots = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        keep = mask[:, None, :, None] & mask[:, None, None, :]
        if self.causal:
            keep = keep & torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        dots = dots.masked_fill(~keep, -torch.finfo(dots.dtype).max)
        attn = F.dropout(dots.softmax(dim=-1), p=p)
        return attn @ v


class AttentionLayers(nn.Module):
    """``depth`` blocks of (self-attention, feed-forward), each x ← x + f(norm(x)) (pre-norm)."""

    def __init__(
        self,
        dim: int,  # model width
        depth: int,  # number of (attention, feed-forward) pairs; 2*depth entries in `layers`
        heads: int = 8,
        dim_head: int = DEFAULT_DIM_HEAD,
        causal: bool = False,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        pre_norm: bool = True,  # False: post-norm, x ← norm(x + f(x)) except after the last layer
    ):
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.pre_norm = pre_norm
        self.layer_types = ("a", "f") * depth
        self.layers = nn.ModuleList()
        for kind in self.layer_types:
            block = (
                Attention(dim, heads=heads, dim_head=dim_head, causal=causal, dropout=attn_dropout)
                if kind == "a"
                else FeedForward(dim, mult=ff_mult, dropout=ff_dropout)
            )
            # The third entry of the original triple was a parameter-free residual module; the sum
            # is written out in forward instead.
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), block]))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, (kind, (norm, block)) in enumerate(zip(self.layer_types, self.layers)):
            h = norm(x) if self.pre_norm else x
            x = x + (block(h, mask=mask) if kind == "a" else block(h))
            if not self.pre_norm and i != last:
                x = norm(x)
        return x


class Encoder(AttentionLayers):
    """Bidirectional (non-causal) attention layers."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 8,
        dim_head: int = DEFAULT_DIM_HEAD,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        pre_norm: bool = True,
    ):
        super().__init__(
            dim,
            depth,
            heads=heads,
            dim_head=dim_head,
            causal=False,
            ff_mult=ff_mult,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            pre_norm=pre_norm,
        )


class TransformerWrapper(nn.Module):
    """Token + position embedding → attention layers → LayerNorm → logits (or the embeddings)."""

    def __init__(
        self,
        *,
        num_tokens: int,  # vocabulary size
        max_seq_len: int,  # longest sequence (size of the position table)
        attn_layers: AttentionLayers,
        emb_dim: Optional[int] = None,  # token embedding width; projected to attn_layers.dim if different
        emb_dropout: float = 0.0,
        use_pos_emb: bool = True,
    ):
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise TypeError(f"attn_layers must be an AttentionLayers/Encoder, got {type(attn_layers).__name__}")
        dim = attn_layers.dim
        emb_dim = dim if emb_dim is None else emb_dim
        self.num_tokens = num_tokens
        self.max_seq_len = max_seq_len
        self.token_emb = nn.Embedding(num_tokens, emb_dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionalEmbedding(emb_dim, max_seq_len) if use_pos_emb else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        # Never used for conditioning, but part of the released checkpoints.
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(
        self,
        x: torch.Tensor,  # token ids [b, n], n <= max_seq_len
        return_embeddings: bool = False,  # True: the normalised hidden states τ_θ(y) [b, n, dim]
        mask: Optional[torch.Tensor] = None,  # [b, n] bool, True = real token
    ) -> torch.Tensor:
        check_token_ids(x, self.num_tokens, self.max_seq_len)
        h = self.token_emb(x)
        if self.pos_emb is not None:
            h = h + self.pos_emb(h)
        h = self.project_emb(self.emb_dropout(h))
        h = self.norm(self.attn_layers(h, mask=mask))
        return h if return_embeddings else self.to_logits(h)


def check_token_ids(tokens: torch.Tensor, num_tokens: int, max_seq_len: int) -> None:
    """Raise a clear error for ids the embedding tables cannot index."""
    if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"expected integer token ids of shape [batch, length], got {tuple(tokens.shape)} {tokens.dtype}"
        )
    if tokens.shape[1] > max_seq_len:
        raise ValueError(f"token sequence of length {tokens.shape[1]} exceeds max_seq_len={max_seq_len}")
    if tokens.device.type != "meta" and tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= num_tokens):
        raise ValueError(
            f"token ids must lie in [0, {num_tokens}) (vocab_size), "
            f"got range [{int(tokens.min())}, {int(tokens.max())}]"
        )
