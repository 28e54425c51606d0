"""ReCU's tau schedule and dead-weight monitor as a PyTorch Lightning callback (``pip install recu-bnn[lightning]``).

```python
import lightning.pytorch as pl
from recu.train.lightning import ReCULightningCallback

trainer = pl.Trainer(max_epochs=100, callbacks=[ReCULightningCallback()])
trainer.fit(my_module)           # a LightningModule whose network holds ReCU layers (recu.binarize)
```

Nothing in recu imports this module, so Lightning is needed only by those who do: it is imported
here, from ``lightning.pytorch`` (the ``lightning`` package) or the older ``pytorch_lightning``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from .callback import ReCUCallback

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError("recu.train.lightning needs PyTorch Lightning: pip install 'recu-bnn[lightning]' "
                          "(or pip install lightning)") from e

__all__ = ["ReCULightningCallback"]


class ReCULightningCallback(pl.Callback):
    """:class:`~recu.train.callback.ReCUCallback` driven by Lightning's epoch hooks.

    tau is set at the start of each training epoch and logged (``recu/tau``) at its end with the
    monitor's share of binary weights that flipped sign during the epoch (``recu/flip_ratio``);
    the full statistics of each epoch are kept in :attr:`history`. The schedule and the monitor are
    saved in Lightning's checkpoints, so ``trainer.fit(..., ckpt_path=...)`` resumes them.

    Args:
        epochs: the schedule's length; None: the trainer's ``max_epochs``.
        schedule, tau_start, tau_end, monitor, run_dir: as :class:`~recu.train.callback.ReCUCallback`;
            ``run_dir`` is used by the global rank-0 process only (every process computes the same
            statistics, one writes the weight snapshots).
    """

    def __init__(self, epochs: Optional[int] = None, schedule: str = "exponential", tau_start: float = 0.85,
                 tau_end: float = 0.99, monitor: bool = True, run_dir: Optional[Union[str, Path]] = None) -> None:
        super().__init__()
        self.options = dict(schedule=schedule, tau_start=tau_start, tau_end=tau_end, monitor=monitor, run_dir=run_dir)
        self.epochs = epochs
        self.recu: Optional[ReCUCallback] = None
        self.history: list[dict[str, Any]] = []
        self._pending_state: Optional[dict[str, Any]] = None

    def _callback(self, trainer: "pl.Trainer") -> ReCUCallback:
        if self.recu is None:
            epochs = self.epochs or trainer.max_epochs
            if not epochs or epochs < 1:
                raise ValueError("ReCULightningCallback needs epochs= or a Trainer with max_epochs")
            options = dict(self.options)
            if not getattr(trainer, "is_global_zero", True):  # under DDP one process writes the snapshots
                options["run_dir"] = None
            self.recu = ReCUCallback(epochs, **options)  # type: ignore[arg-type]
            if self._pending_state is not None:  # a checkpoint's state, loaded before training began
                self.recu.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.recu

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._callback(trainer).on_epoch_start(pl_module, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        record = self._callback(trainer).on_epoch_end(pl_module, trainer.current_epoch)
        self.history.append(record)
        pl_module.log("recu/tau", float(record["tau"]))
        total = (record.get("dead_weight") or {}).get("total") or {}
        if total.get("flip_ratio") is not None:
            pl_module.log("recu/flip_ratio", float(total["flip_ratio"]))

    def state_dict(self) -> dict[str, Any]:
        return self.recu.state_dict() if self.recu is not None else (self._pending_state or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.recu is not None:
            self.recu.load_state_dict(state_dict)
        else:
            self._pending_state = dict(state_dict)
