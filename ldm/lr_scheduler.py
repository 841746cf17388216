"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR``, under their original names.

Each object maps the optimizer step n to a factor f(n) that LambdaLR multiplies into the base
learning rate: a linear warm-up from ``start`` to ``max``, then cosine (or linear) decay to ``min``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["LambdaLinearScheduler", "LambdaWarmUpCosineScheduler", "LambdaWarmUpCosineScheduler2"]

log = logging.getLogger(__name__)


def _warm_up(n: float, steps: float, start: float, peak: float) -> float:
    return (peak - start) / steps * n + start


def _cosine(progress: float, lo: float, hi: float) -> float:
    return lo + 0.5 * (hi - lo) * (1 + math.cos(min(progress, 1.0) * math.pi))


class LambdaWarmUpCosineScheduler:
    """Single cycle: warm-up over ``warm_up_steps``, cosine decay until ``max_decay_steps``."""

    def __init__(
        self,
        warm_up_steps: int,     # steps of linear warm-up from lr_start to lr_max
        lr_min: float,          # factor reached at max_decay_steps and kept afterwards
        lr_max: float,          # factor at the end of warm-up
        lr_start: float,        # factor at step 0
        max_decay_steps: int,   # step at which the cosine reaches lr_min
        verbosity_interval: int = 0,  # log the factor every this many steps (0: never)
    ):
        if max_decay_steps <= warm_up_steps:
            raise ValueError(f"max_decay_steps ({max_decay_steps}) must exceed warm_up_steps ({warm_up_steps})")
        self.lr_warm_up_steps = warm_up_steps
        self.lr_start = lr_start
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.lr_max_decay_steps = max_decay_steps
        self.last_lr = 0.0
        self.verbosity_interval = verbosity_interval

    def schedule(self, n: int, **kwargs) -> float:
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            log.info("current step: %d, recent lr-multiplier: %g", n, self.last_lr)
        if n < self.lr_warm_up_steps:
            lr = _warm_up(n, self.lr_warm_up_steps, self.lr_start, self.lr_max)
        else:
            progress = (n - self.lr_warm_up_steps) / (self.lr_max_decay_steps - self.lr_warm_up_steps)
            lr = _cosine(progress, self.lr_min, self.lr_max)
        self.last_lr = lr
        return lr

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaWarmUpCosineScheduler2:
    """Repeated cycles, one entry per cycle in each list; use with a base learning rate of 1.0."""

    def __init__(
        self,
        warm_up_steps: Sequence[int],   # warm-up length of each cycle
        f_min: Sequence[float],         # factor at the end of each cycle
        f_max: Sequence[float],         # factor after warm-up
        f_start: Sequence[float],       # factor at the start of each cycle
        cycle_lengths: Sequence[int],   # length of each cycle in steps
        verbosity_interval: int = 0,    # log the factor every this many steps (0: never)
    ):
        lengths = {len(warm_up_steps), len(f_min), len(f_max), len(f_start), len(cycle_lengths)}
        if len(lengths) != 1:
            raise ValueError("warm_up_steps, f_min, f_max, f_start and cycle_lengths must have one entry per cycle")
        self.lr_warm_up_steps = list(warm_up_steps)
        self.f_start = list(f_start)
        self.f_min = list(f_min)
        self.f_max = list(f_max)
        self.cycle_lengths = list(cycle_lengths)
        self.cum_cycles = np.cumsum([0] + self.cycle_lengths)
        self.last_f = 0.0
        self.verbosity_interval = verbosity_interval

    def find_in_interval(self, n: int) -> int:
        """Index of the cycle that step n falls in (the last one once all have passed)."""
        for i, end in enumerate(self.cum_cycles[1:]):
            if n <= end:
                return i
        return len(self.cycle_lengths) - 1

    def _decay(self, n: float, cycle: int) -> float:
        progress = (n - self.lr_warm_up_steps[cycle]) / (self.cycle_lengths[cycle] - self.lr_warm_up_steps[cycle])
        return _cosine(progress, self.f_min[cycle], self.f_max[cycle])

    def schedule(self, n: int, **kwargs) -> float:
        cycle = self.find_in_interval(n)
        n = n - self.cum_cycles[cycle]
        if self.verbosity_interval > 0 and n % self.verbosity_interval == 0:
            log.info("current step: %d, recent lr-multiplier: %g, current cycle %d", n, self.last_f, cycle)
        if n < self.lr_warm_up_steps[cycle]:
            f = _warm_up(n, self.lr_warm_up_steps[cycle], self.f_start[cycle], self.f_max[cycle])
        else:
            f = self._decay(n, cycle)
        self.last_f = float(f)
        return self.last_f

    def __call__(self, n: int, **kwargs) -> float:
        return self.schedule(n, **kwargs)


class LambdaLinearScheduler(LambdaWarmUpCosineScheduler2):
    """As :class:`LambdaWarmUpCosineScheduler2`, but decaying linearly from f_max to f_min."""

    def _decay(self, n: float, cycle: int) -> float:
        length = self.cycle_lengths[cycle]
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length
