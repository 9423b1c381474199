"""Tiny Lightning models and trainers built in code (Lightning's ``BoringModel`` idea).

Shared by ``tests/lightning`` and the cross-framework suite: a linear layer on
random tensors, so that a whole ``fit`` takes well under a second on a CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from support.processes import run_child

TESTS = Path(__file__).resolve().parents[1]
FEATURES = 8

#: Lightning's own advice on a tiny CPU run, filtered by message (pytest ``filterwarnings``
#: syntax); everything else Lightning warns about stays an error.
LIGHTNING_NOISE: tuple[str, ...] = (
    # DataLoader(num_workers=0) on purpose: worker processes would cost more than the run.
    r"ignore:The '\w+_dataloader' does not have many workers:UserWarning",
    # accelerator="cpu" on purpose, also where a GPU (or Apple's MPS) is there.
    r"ignore:GPU available but not used:UserWarning",
)


class TrainingFailed(RuntimeError):
    """What :class:`BoringModel` raises at ``fail_at_step``."""


class BoringModel(pl.LightningModule):
    """A linear layer on random data; logs ``loss`` per step and ``val_loss`` per validation.

    Args:
        fail_at_step: raise :class:`TrainingFailed` in the training step of this
            optimizer step (1-based).
        lr: SGD learning rate.
    """

    def __init__(self, fail_at_step: int | None = None, lr: float = 0.05) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(FEATURES, 1)
        self.fail_at_step = fail_at_step
        self.lr = lr
        self.validation_batches = 0  # sanity check included

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def _loss(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        # global_step counts finished optimizer steps: this batch belongs to step global_step + 1.
        if self.fail_at_step is not None and self.global_step + 1 == self.fail_at_step:
            raise TrainingFailed(f"training_step failed at step {self.fail_at_step}")
        loss = self._loss(batch)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self.validation_batches += 1
        self.log("val_loss", self._loss(batch), sync_dist=True)  # one value across ranks under DDP

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(batches: int, *, batch_size: int = 4, seed: int = 0) -> DataLoader[Any]:
    """A DataLoader of ``batches`` batches of random regression data (no shuffling)."""
    g = torch.Generator().manual_seed(seed)
    n = batches * batch_size
    x = torch.randn(n, FEATURES, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(
    root: str | os.PathLike[str], callbacks: Sequence[Any] = (), **overrides: Any
) -> pl.Trainer:
    """A tiny CPU ``Trainer`` writing under ``root``; ``overrides`` win over the defaults.

    Defaults: one CPU device, no logger, no progress bar, no model summary, no
    checkpointing, no sanity check.
    """
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": os.fspath(root),
    }
    options.update(overrides)
    return pl.Trainer(callbacks=list(callbacks), **options)


def script_parser(description: str | None, *, train_batches: int) -> argparse.ArgumentParser:
    """The arguments every Lightning test script takes (a script adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", required=True, help="default_root_dir")
    parser.add_argument("--config", required=True, help="the callbacks configuration")
    parser.add_argument("--out", required=True, help="result file prefix")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument(
        "--train-batches", type=int, default=train_batches, help="batches per epoch"
    )
    parser.add_argument(
        "--ckpt-every", type=int, default=0, help="ModelCheckpoint every_n_train_steps (0: none)"
    )
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint")
    parser.add_argument("--ddp", action="store_true", help="strategy='ddp' on 2 CPU processes")
    return parser


def script_trainer(
    args: argparse.Namespace, callbacks: list[Any], *, log_every_n_steps: int
) -> pl.Trainer:
    """The trainer of a test script: its callbacks, a step checkpoint and DDP as asked."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if args.ckpt_every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=Path(args.root) / "checkpoints",
                filename="step{step}",
                auto_insert_metric_name=False,
                every_n_train_steps=args.ckpt_every,
                save_top_k=-1,
            )
        )
    distributed = {"strategy": "ddp", "devices": 2} if args.ddp else {}
    return trainer(
        args.root,
        callbacks,
        max_steps=args.max_steps,
        max_epochs=-1,
        log_every_n_steps=log_every_n_steps,
        enable_checkpointing=bool(args.ckpt_every),
        **distributed,
    )


def wait_for_every_rank() -> None:
    """Under DDP, leave only once every rank has written its result.

    Lightning does not wait for the ranks it started: rank 0, the test's child, would
    otherwise exit before them.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def subprocess_env() -> dict[str, str]:
    """The environment of a child Python: ``tests/`` importable, ``PYTHONPATH`` made absolute.

    Absolute, because the child runs in a temporary directory and a relative entry
    (``PYTHONPATH=src``) would point nowhere there.
    """
    env = dict(os.environ)
    entries = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *entries])
    return env


SCRIPT = Path(__file__).resolve().parent / "lightning_script.py"


def run_script(
    *args: str, cwd: str | os.PathLike[str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``lightning_script.py ARGS`` in a fresh Python; fail with its output if it fails.

    The child leads its own process group, so that on a timeout the ranks it
    started (DDP) are killed with it instead of hanging on in a collective.
    """
    return run_child(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=subprocess_env(), timeout=timeout
    )


class BoringDataModule(pl.LightningDataModule):
    """The data of :func:`loader` as a datamodule (what ``LightningCLI`` configures).

    Args:
        train_batches: training batches per epoch.
        val_batches: validation batches.
    """

    def __init__(self, train_batches: int = 4, val_batches: int = 2) -> None:
        super().__init__()
        self.train_batches = train_batches
        self.val_batches = val_batches

    def train_dataloader(self) -> DataLoader[Any]:
        return loader(self.train_batches)

    def val_dataloader(self) -> DataLoader[Any]:
        return loader(self.val_batches, seed=1)
