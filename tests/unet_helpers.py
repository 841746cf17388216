"""Helpers shared by the UNet tests."""
from __future__ import annotations

import math

import torch


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere, in place: zero-initialised output convs would make outputs
    trivially 0 and hide differences between implementations."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model
