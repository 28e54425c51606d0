"""ReCU in your own PyTorch training loop: binarise a model, then let ReCUCallback set tau each epoch
and measure the binary weights (sign flips, dead weights) at each epoch's end.

    python examples/own_training_loop.py
"""

from __future__ import annotations

import torch
from torch import nn

import recu
from recu.train import ReCUCallback


def make_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two blobs of 3x16x16 images told apart by their mean: a stand-in for your data."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g) + (2.0 * y - 1.0).view(-1, 1, 1, 1)
    return x, y


def main(epochs: int = 10) -> list[dict]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.Hardtanh(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.Hardtanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))
    model = recu.binarize(model)                 # the middle conv becomes a ReCUConv2d
    recu_cb = ReCUCallback(epochs=epochs)        # tau 0.85 -> 0.99 (paper Eq. 24) and the monitor
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = make_data()
    history = []
    for epoch in range(epochs):
        tau = recu_cb.on_epoch_start(model, epoch)
        model.train()
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        stats = recu_cb.on_epoch_end(model, epoch)
        flips = stats["dead_weight"]["total"]["flip_ratio"]
        print(f"epoch {epoch + 1}/{epochs}: tau {tau:.4f}, loss {loss.item():.4f}, sign flips {100 * flips:.2f}%")
        history.append(stats)
    return history


if __name__ == "__main__":
    main()
