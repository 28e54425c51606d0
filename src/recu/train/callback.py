"""The ReCU parts of the training engine for a user's own loop: tau schedule and dead-weight monitor in one object.

```python
recu_cb = ReCUCallback(epochs=100)                     # the paper's exponential tau, 0.85 -> 0.99
for epoch in range(100):
    recu_cb.on_epoch_start(model, epoch)               # writes this epoch's tau into every ReCU layer
    ...                                                # your training steps
    stats = recu_cb.on_epoch_end(model, epoch)         # {"epoch", "tau", "dead_weight": {...}}
```

``state_dict()`` / ``load_state_dict()`` carry the schedule and the monitor across a resume (tensors and
plain values: a checkpoint holding them still loads with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ..schedule import TauSchedule, create_schedule

__all__ = ["ReCUCallback"]


class ReCUCallback:
    """Sets tau at the start of each epoch and measures the binary weights at its end.

    Args:
        epochs: length of the run (the schedule reaches ``tau_end`` at its last epoch).
        schedule: ``exponential`` (paper Eq. 24), ``linear``, ``cosine``, ``constant``, or a
            :class:`~recu.schedule.TauSchedule` (then ``epochs``, ``tau_start`` and ``tau_end`` are unused).
        tau_start, tau_end: the schedule's ends.
        monitor: measure the weights each epoch (:class:`recu.analysis.monitor.DeadWeightMonitor`:
            sign flips by magnitude, never-flipped and clamped shares, distribution fits).
        run_dir: where the monitor writes its weight snapshots (``run_dir/weights/``); None: none written.
    """

    def __init__(self, epochs: int, schedule: Union[str, TauSchedule] = "exponential", tau_start: float = 0.85,
                 tau_end: float = 0.99, monitor: bool = True, run_dir: Optional[Union[str, Path]] = None) -> None:
        self.schedule = (schedule if isinstance(schedule, TauSchedule)
                         else create_schedule(schedule, tau_start=tau_start, tau_end=tau_end, epochs=epochs))
        self.epochs = int(epochs)
        self.run_dir = run_dir
        self.monitor: Any = None
        if monitor:
            from ..analysis.monitor import DeadWeightMonitor  # the analysis extra

            self.monitor = DeadWeightMonitor(snapshots=run_dir is not None)
        self._begun = False  # the monitor's reference signs: taken once per process (or loaded)

    def on_epoch_start(self, model: nn.Module, epoch: int) -> float:
        """Write epoch ``epoch``'s tau (0-based) into every ReCU layer of ``model``; return it."""
        if self.monitor is not None and not self._begun:
            self.monitor.on_train_begin(model, self.run_dir, self.epochs)
        self._begun = True
        return self.schedule.apply(model, epoch)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """``{"epoch", "tau"}`` and, with the monitor, its ``"dead_weight"`` statistics (JSON-serialisable)."""
        if not self._begun:
            raise RuntimeError("ReCUCallback.on_epoch_end before on_epoch_start: call on_epoch_start first")
        record: dict[str, Any] = {"epoch": int(epoch), "tau": self.schedule.last_tau}
        if self.monitor is not None:
            record.update(self.monitor.on_epoch_end(model, epoch))
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(),
                "monitor": self.monitor.state_dict() if self.monitor is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        if self.monitor is not None and state.get("monitor") is not None:
            self.monitor.load_state_dict(state["monitor"])
