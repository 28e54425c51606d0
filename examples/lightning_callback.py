"""ReCU in PyTorch Lightning: ReCULightningCallback sets tau each epoch and logs the sign flips
(``pip install 'recu-bnn[lightning]'``).

    python examples/lightning_callback.py
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recu
from recu.train.lightning import ReCULightningCallback


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = recu.binarize(nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.Hardtanh(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.Hardtanh(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main(epochs: int = 10, **trainer_options: object) -> ReCULightningCallback:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (512,), generator=g)
    x = torch.randn(512, 3, 16, 16, generator=g) + (2.0 * y - 1.0).view(-1, 1, 1, 1)
    recu_cb = ReCULightningCallback()            # its schedule spans the trainer's max_epochs
    options = dict(max_epochs=epochs, callbacks=[recu_cb], accelerator="cpu", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(**{**options, **trainer_options})
    trainer.fit(Classifier(), DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
    for record in recu_cb.history:
        flips = record["dead_weight"]["total"]["flip_ratio"]
        print(f"epoch {record['epoch'] + 1}: tau {record['tau']:.4f}, sign flips {100 * flips:.2f}%")
    return recu_cb


if __name__ == "__main__":
    main()
