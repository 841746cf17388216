"""Vector quantisation layer of the VQ-regularised autoencoder (paper Sec. 3.1, "VQ-reg.").

Each latent vector z_e is replaced by its nearest codebook entry e_k, k = argmin_j ||z_e - e_j||^2
(van den Oord et al. 2017), with the straight-through estimator z_q = z_e + sg[e_k - z_e] so the
encoder receives the decoder's gradient unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["VectorQuantizer2", "VectorQuantizer"]


class VectorQuantizer2(nn.Module):
    """Codebook of ``n_e`` vectors of size ``e_dim`` (key `embedding.weight`).

    Loss = codebook term ||e_k - sg[z_e]||^2 + commitment term ||sg[e_k] - z_e||^2, one of them
    scaled by ``beta``:

    * ``legacy=True`` (default, bug-compatible with the released checkpoints' training): ``beta``
      multiplies the CODEBOOK term, the commitment term has weight 1;
    * ``legacy=False``: ``beta`` multiplies the COMMITMENT term, as in the VQ-VAE paper.

    ``remap`` names a .npy file of the codebook indices actually used; indices are then reported
    in that reduced vocabulary (`used` buffer), unknown ones mapped to ``unknown_index``
    ("random", "extra" for one extra token, or a fixed int).
    """

    def __init__(
        self,
        n_e: int,                                # number of codebook entries
        e_dim: int,                              # dimension of each entry (= latent channels)
        beta: float,                             # weight of one loss term, see `legacy`
        remap: Optional[str] = None,             # .npy file with the used indices
        unknown_index: Union[str, int] = "random",
        sane_index_shape: bool = False,          # return indices as (B, H, W) instead of flat
        legacy: bool = True,
    ):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

        self.remap = remap
        if remap is not None:
            used = torch.as_tensor(np.load(remap)).long()
            if used.ndim != 1 or used.numel() == 0 or int(used.min()) < 0 or int(used.max()) >= n_e:
                raise ValueError(f"remap={remap!r}: expected a 1-D array of codebook indices in [0, {n_e})")
            self.register_buffer("used", used)
            self.re_embed = used.shape[0]
            if unknown_index == "extra":
                unknown_index = self.re_embed
                self.re_embed += 1
            elif unknown_index != "random" and not isinstance(unknown_index, int):
                raise ValueError(f"unknown_index must be 'random', 'extra' or an int, got {unknown_index!r}")
        else:
            self.re_embed = n_e
        self.unknown_index = unknown_index
        self.sane_index_shape = sane_index_shape

    # -- index remapping ---------------------------------------------------------------------------
    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Full-codebook indices (B, ...) -> positions in `used`; unknown ones -> unknown_index."""
        ishape = inds.shape
        if len(ishape) < 2:
            raise ValueError(f"remap_to_used expects batched indices (B, ...), got shape {tuple(ishape)}")
        inds = inds.reshape(ishape[0], -1)
        used = self.used.to(inds)
        match = inds[:, :, None] == used[None, None, :]
        new = match.long().argmax(-1)
        unknown = ~match.any(-1)
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=(int(unknown.sum()),), device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(ishape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in `used` (B, ...) -> full-codebook indices; the extra token maps to entry 0."""
        ishape = inds.shape
        if len(ishape) < 2:
            raise ValueError(f"unmap_to_all expects batched indices (B, ...), got shape {tuple(ishape)}")
        inds = inds.reshape(ishape[0], -1).clone()
        used = self.used.to(inds)
        if self.re_embed > used.shape[0]:
            inds[inds >= used.shape[0]] = 0
        return used[inds].reshape(ishape)

    # -- quantisation ------------------------------------------------------------------------------
    def forward(
        self,
        z: torch.Tensor,
        temp: Optional[float] = None,
        rescale_logits: bool = False,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[None, None, torch.Tensor]]:
        """z (B, C, H, W) -> (z_q, loss, (perplexity=None, min_encodings=None, indices))."""
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError("VectorQuantizer2 is deterministic: temp, rescale_logits and return_logits are unsupported")
        if z.shape[1] != self.e_dim:
            raise ValueError(f"expected {self.e_dim} latent channels, got input of shape {tuple(z.shape)}")
        z = z.permute(0, 2, 3, 1).contiguous()
        z_flat = z.reshape(-1, self.e_dim)
        codebook = self.embedding.weight
        # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e
        d = (z_flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None, :]
             - 2.0 * z_flat @ codebook.t())
        indices = torch.argmin(d, dim=1)
        z_q = self.embedding(indices).view(z.shape)

        codebook_term = torch.mean((z_q - z.detach()) ** 2)
        commitment_term = torch.mean((z_q.detach() - z) ** 2)
        if self.legacy:
            loss = commitment_term + self.beta * codebook_term
        else:
            loss = self.beta * commitment_term + codebook_term

        z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = z_q.permute(0, 3, 1, 2).contiguous()

        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(z.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Optional[Sequence[int]]) -> torch.Tensor:
        """Look up entries; ``shape`` = (B, H, W, C) gives a (B, C, H, W) latent, None keeps the
        indices' shape with C appended (e.g. (B, H, W) -> (B, H, W, C))."""
        if self.remap is not None:
            if shape is None:
                raise ValueError("get_codebook_entry needs `shape` (B, H, W, C) when a remap is used")
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(*shape).permute(0, 3, 1, 2).contiguous()
        return z_q


# The LDM code base only ever uses the second implementation; the old name points at it.
VectorQuantizer = VectorQuantizer2
