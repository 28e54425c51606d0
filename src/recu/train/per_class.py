"""Top-1 accuracy of each class over a loader (``recu eval`` on a data set whose classes have names)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["class_hits", "per_class_report"]


@torch.no_grad()
def class_hits(model: nn.Module, loader: Any, device: torch.device, num_classes: int) -> tuple[list[int], list[int]]:
    """(correct top-1 predictions, images) per class label, counted on the device and read once."""
    was_training = model.training
    model.eval()
    hits = torch.zeros(num_classes, dtype=torch.int64, device=device)
    seen = torch.zeros(num_classes, dtype=torch.int64, device=device)
    try:
        for x, y in loader:
            pred = model(x).argmax(dim=1)
            seen += torch.bincount(y, minlength=num_classes)
            hits += torch.bincount(y[pred == y], minlength=num_classes)
    finally:
        model.train(was_training)
    return hits.tolist(), seen.tolist()


def per_class_report(names: Sequence[str], hits: Sequence[int], seen: Sequence[int]) -> dict[str, dict[str, Any]]:
    """``{name: {"top1": % or None without images, "images": n}}`` in label order."""
    return {name: {"top1": 100.0 * h / n if n else None, "images": n} for name, h, n in zip(names, hits, seen)}
