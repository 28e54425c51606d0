"""Training: the config dataclass, the engine, checkpoints, metrics log and torchrun/DDP support; the tau
schedule and dead-weight monitor for a user's own loop (:class:`ReCUCallback`, and
``recu.train.lightning.ReCULightningCallback`` for PyTorch Lightning)."""

from .callback import ReCUCallback
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import TrainConfig
from .divergence import TrainingDiverged
from .engine import Trainer, evaluate, lr_factor, param_groups, train

__all__ = [
    "TrainConfig",
    "Trainer",
    "ReCUCallback",
    "TrainingDiverged",
    "train",
    "evaluate",
    "lr_factor",
    "param_groups",
    "model_from_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
