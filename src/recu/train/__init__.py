"""Training: the config dataclass, the engine, checkpoints, metrics log and torchrun/DDP support."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .divergence import TrainingDiverged
from .engine import Trainer, evaluate, lr_factor, model_from_checkpoint, param_groups, train

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "train",
    "evaluate",
    "lr_factor",
    "param_groups",
    "model_from_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
