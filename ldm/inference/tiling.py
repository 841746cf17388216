"""Decoding large latents tile by tile, so that memory stays bounded by the tile size.

The decoder D is convolutional, so a latent larger than the training size decodes to a larger
image (paper Sec. 4.3.2), but its activations grow with the area: at 1024^2 the decoder of an
f=4 model holds several GiB. ``decode_tiled`` decodes overlapping latent tiles one at a time and
blends them with weights that ramp linearly across each overlap (and are 1 elsewhere), so seams
fade instead of showing. Only one tile's activations and the output image are in memory at once.
Because the decoder's normalisation layers see one tile at a time, tiled output is close to, not
identical with, the untiled one; a tile covering the whole latent reproduces it exactly.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

__all__ = ["decode", "decode_tiled", "tile_starts"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` cells covering ``[0, size)`` with >= ``overlap`` overlap;
    the last tile ends exactly at ``size``."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, ramp_in: int, ramp_out: int, device: torch.device) -> torch.Tensor:
    """1-D blending weights: rising over the first ``ramp_in`` cells, falling over the last
    ``ramp_out``, 1 in between. Strictly positive, so every output pixel has weight."""
    w = torch.ones(length, device=device)
    if ramp_in > 0:
        w[:ramp_in] = torch.arange(1, ramp_in + 1, device=device, dtype=torch.float32) / (ramp_in + 1)
    if ramp_out > 0:
        w[length - ramp_out:] = torch.minimum(
            w[length - ramp_out:],
            torch.arange(ramp_out, 0, -1, device=device, dtype=torch.float32) / (ramp_out + 1))
    return w


@torch.no_grad()
def decode_tiled(
    model: Any,
    z: torch.Tensor,
    tile: int = 64,      # tile side in latent cells
    overlap: int = 16,   # overlap between neighbouring tiles in latent cells
    decode_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,  # default: model.decode_first_stage
) -> torch.Tensor:
    """D(z) assembled from overlapping tiles, blended linearly across the overlaps."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    decode_fn = decode_fn or model.decode_first_stage
    h, w = z.shape[-2:]
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    f = None
    for y in ys:
        for x in xs:
            zt = z[..., y:y + tile, x:x + tile]
            dec = decode_fn(zt).float()
            if out is None:
                f = dec.shape[-1] // zt.shape[-1]
                if dec.shape[-2] != f * zt.shape[-2]:
                    raise ValueError(f"decoder output {tuple(dec.shape)} is not a whole multiple of the tile "
                                     f"{tuple(zt.shape)}")
                out = dec.new_zeros(*dec.shape[:-2], h * f, w * f)
                weight = dec.new_zeros(h * f, w * f)
            th, tw = dec.shape[-2:]
            # ramps only where a neighbouring tile overlaps this one (none at the image border)
            wy = _ramp(th, f * _shared(ys, y, tile, before=True), f * _shared(ys, y, tile, before=False), dec.device)
            wx = _ramp(tw, f * _shared(xs, x, tile, before=True), f * _shared(xs, x, tile, before=False), dec.device)
            wt = wy[:, None] * wx[None, :]
            out[..., y * f:y * f + th, x * f:x * f + tw] += dec * wt
            weight[y * f:y * f + th, x * f:x * f + tw] += wt
    return out / weight


def _shared(starts: list[int], start: int, tile: int, before: bool) -> int:
    """Cells this tile shares with its previous (``before``) or next neighbour."""
    i = starts.index(start)
    if before:
        return 0 if i == 0 else starts[i - 1] + tile - start
    return 0 if i == len(starts) - 1 else start + tile - starts[i + 1]


def decode(model: Any, z: torch.Tensor, tile: Optional[int] = None, overlap: Optional[int] = None) -> torch.Tensor:
    """D(z), tiled when ``tile`` is given and smaller than the latent (``overlap`` default tile/4)."""
    if tile is None or tile <= 0 or (z.shape[-2] <= tile and z.shape[-1] <= tile):
        return model.decode_first_stage(z).float()
    return decode_tiled(model, z, tile, tile // 4 if overlap is None else overlap)
