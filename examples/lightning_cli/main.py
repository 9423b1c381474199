"""LightningCLI with callbridge's callbacks declared in the CLI's YAML config.

Run it from the repository root (CPU; under a minute on a 2-core machine, 31 s measured)::

    pip install ./ "./adapters/lightning[cli]"   # callbridge, callbridge-lightning, jsonargparse
    python examples/lightning_cli/main.py fit --config examples/lightning_cli/config.yaml

What it shows: the training code below knows nothing of callbridge. ``config.yaml`` lists
``callbridge_lightning.FromConfig`` under ``trainer.callbacks``, with the path of
``callbacks.yaml``; FromConfig builds the callbacks that file declares (``training_stage``,
``log``, ``early_stopping``, ``reporter``) when the CLI builds the trainer, and runs them in
its place, so a config error stops the CLI before training starts. The model (a small MLP)
and the data (a noisy linear function of random inputs) are built in code.

Afterwards the trainer's ``default_root_dir`` (``runs/lightning_cli``, or
``--trainer.default_root_dir DIR``) holds ``events.jsonl``, ``stage.json`` and
``callbridge_report.json``, whose ``status`` is "stopped": early stopping ended the run
before ``trainer.max_steps``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 8


class Regressor(pl.LightningModule):
    """A small MLP trained with MSE; logs ``loss`` and ``val_loss``.

    Args:
        hidden: width of the hidden layer.
        lr: Adam's learning rate.
    """

    def __init__(self, hidden: int = 32, lr: float = 1e-2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.lr = lr

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class LinearData(pl.LightningDataModule):
    """``y = x @ w + noise`` on random inputs, generated in code.

    Args:
        train_samples: training samples.
        val_samples: validation samples.
        batch_size: samples per batch.
    """

    def __init__(self, train_samples: int = 512, val_samples: int = 128, batch_size: int = 16):
        super().__init__()
        self.train_samples = train_samples
        self.val_samples = val_samples
        self.batch_size = batch_size

    def _loader(self, n: int, seed: int) -> DataLoader:
        w = torch.linspace(-1, 1, FEATURES).unsqueeze(1)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, FEATURES, generator=generator)
        y = x @ w + 0.1 * torch.randn(n, 1, generator=generator)
        # num_workers=0: worker processes would cost more than this whole run.
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_samples, seed=0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_samples, seed=1)


def main() -> None:
    cli = LightningCLI(Regressor, LinearData)
    trainer = cli.trainer
    if trainer.is_global_zero:  # the closing line the other examples print too
        print(f"done at step {trainer.global_step}; see {Path(trainer.default_root_dir).resolve()}")


if __name__ == "__main__":
    main()
