"""A PyTorch Lightning run whose callbacks come from ``pyproject.toml``.

Run it (CPU; under a minute on a 2-core machine, 34 s measured)::

    pip install ./ ./adapters/lightning   # callbridge and callbridge-lightning
    python examples/lightning/train.py --out runs/lightning

What it shows: ``callbridge_lightning.callbacks`` turns the ``[tool.callbacks]`` table of
the ``pyproject.toml`` beside this file into Lightning callbacks: ``metrics``, ``log``
(JSON lines), ``early_stopping`` on ``val_loss``, ``bema`` (weight averaging) and
``reporter``, the same neutral callbacks as in ``examples/hf``. The model is a plain
``nn.Module`` (a small MLP) inside a ``LightningModule``; the data is a noisy linear
function of random inputs, generated in code. The validation loss levels off at the noise
within a few epochs, and early stopping ends the run well before ``--max-steps``.

Afterwards ``--out`` holds ``metrics.jsonl`` (one JSON object per event),
``callbridge_report.json`` (``status`` "stopped", best ``val_loss`` and its step) and
``bema/model.safetensors`` (the averaged weights of the whole LightningModule:
``module.load_state_dict(safetensors.torch.load_file(...))``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import callbridge_lightning

CONFIG = Path(__file__).resolve().with_name("pyproject.toml")
FEATURES = 8


class Regressor(pl.LightningModule):
    """Trains any ``nn.Module`` on (x, y) batches with MSE; logs ``loss`` and ``val_loss``."""

    def __init__(self, net: nn.Module, lr: float = 1e-2) -> None:
        super().__init__()
        self.net = net
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


def data(n: int, seed: int) -> DataLoader:
    """``n`` samples of ``y = x @ w + noise`` (the same ``w`` for every split)."""
    w = torch.linspace(-1, 1, FEATURES).unsqueeze(1)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=generator)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=generator)
    # num_workers=0: worker processes would cost more than this whole run (Lightning warns).
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=seed == 0, num_workers=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lightning", help="default: runs/lightning")
    parser.add_argument("--max-steps", type=int, default=2000, help="upper bound on steps")
    options = parser.parse_args()

    pl.seed_everything(0)
    net = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    trainer = pl.Trainer(
        # The one callbridge line: the callbacks of pyproject.toml join the trainer.
        callbacks=callbridge_lightning.callbacks(CONFIG),
        default_root_dir=options.out,  # callbridge's output directory under Lightning
        max_steps=options.max_steps,
        max_epochs=-1,  # until max_steps or early stopping
        log_every_n_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(Regressor(net), data(512, seed=0), data(128, seed=1))
    print(f"done at step {trainer.global_step}; see {Path(options.out).resolve()}")


if __name__ == "__main__":
    main()
