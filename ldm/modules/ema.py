"""Exponential moving average of a model's trainable parameters, stored as buffers.

Key layout matches the original checkpoints: `decay`, `num_updates`, and one buffer per trainable
parameter named by its dotted name with the dots removed (`model_ema.diffusion_modelout2weight`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

__all__ = ["LitEma"]


class LitEma(nn.Module):
    """shadow <- shadow - (1 - d) * (shadow - param) after each step, with the warm-up decay
    d = min(decay, (1 + n) / (10 + n)) at update n when ``use_num_upates`` (sic, original name)."""

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        use_num_upates: bool = True,  # warm the decay up with the number of updates
    ):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int))
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            s_name = name.replace(".", "")
            if s_name in self._buffers:
                raise ValueError(f"parameters {name!r} and another one both map to EMA buffer {s_name!r}")
            self.m_name2s_name[name] = s_name
            self.register_buffer(s_name, p.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    def reset_num_updates(self) -> None:
        self.num_updates = torch.tensor(0, dtype=torch.int, device=self.num_updates.device)

    def current_decay(self) -> torch.Tensor:
        """Advance the update counter and return the decay used for this update."""
        decay = self.decay
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = torch.minimum(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return decay

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        one_minus_decay = 1.0 - self.current_decay()
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            s_name = self.m_name2s_name.get(name)
            if s_name is None:
                raise KeyError(f"parameter {name!r} is trainable but has no EMA copy")
            buf = shadow[s_name]
            if buf.dtype != p.dtype:
                buf = buf.to(p.dtype)
                setattr(self, s_name, buf)
            buf.sub_(one_minus_decay.to(buf.dtype) * (buf - p))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable parameters with their averages."""
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(shadow[self.m_name2s_name[name]])

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Save the current parameters, to be put back by :meth:`restore`."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by :meth:`store` (e.g. after validating with EMA weights)."""
        for saved, p in zip(self.collected_params, parameters):
            p.copy_(saved)


@contextmanager
def ema_weights_in(ema: LitEma, model: nn.Module) -> Iterator[None]:
    """Run the block with ``ema``'s weights in ``model``; the trained weights come back after,
    also when the block raises."""
    ema.store(model.parameters())
    ema.copy_to(model)
    try:
        yield
    finally:
        ema.restore(model.parameters())
