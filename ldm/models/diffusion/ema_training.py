"""EMA of the denoiser's weights during training (the original's ``use_ema``): when it moves and
how sampling and validation swap it in.

The EMA follows each optimizer step at once, so that a checkpoint written at the end of that batch
(callbacks run before the module's ``on_train_batch_end``) includes the update; a resumed run then
continues exactly. While gradients accumulate it still moves every batch, as the original did.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Optional

from ldm.modules.ema import ema_weights_in
from ldm.trainer.nonfinite import update_was_skipped

log = logging.getLogger(__name__)


class EMATraining:
    """Mixin for a LightningModule with ``use_ema``, ``model_ema`` (LitEma) and ``model``."""

    _ema_updated = False

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self._update_ema()
        self._ema_updated = True

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if not self._ema_updated:  # an accumulating batch: the EMA moves every batch
            self._update_ema()
        self._ema_updated = False

    def _update_ema(self) -> None:
        if self.use_ema and not update_was_skipped(self._trainer):  # a skipped (non-finite) step changes nothing
            self.model_ema(self.model)

    @contextmanager
    def ema_scope(self, context: Optional[str] = None) -> Iterator[None]:
        """Run the block with the EMA weights in ``self.model``; restore the trained ones after."""
        if not self.use_ema:
            yield None
            return
        with ema_weights_in(self.model_ema, self.model):
            if context is not None:
                log.info("%s: switched to EMA weights", context)
            yield None
        if context is not None:
            log.info("%s: restored training weights", context)
