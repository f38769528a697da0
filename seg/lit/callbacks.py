"""Lightning callbacks seg adds to Lightning's own (checkpoints, early stopping, LR monitor, progress bar)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, Timer


class FinalValidation(Callback):
    """Validate at the end of training whatever the validation cadence, so the best checkpoint and the
    final metrics always include the last weights.

    Lightning validates when training is asked to stop mid-epoch (``max_time``'s Timer, a kill handled as
    a stop), but only on an epoch its cadence (``check_val_every_n_epoch``) marks for validation. When the
    end comes (the budget is spent, a stop was requested, or the last batch of ``max_epochs``), this makes
    the current epoch a validation epoch. Written here because Lightning has no "validate on the way out".
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.check_val_every_n_epoch in (None, 1) or trainer.limit_val_batches == 0:
            return
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining("train") if timer is not None else None
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if trainer.should_stop or (remaining is not None and remaining <= 0) or (last_epoch and last_batch):
            trainer.check_val_every_n_epoch = 1
