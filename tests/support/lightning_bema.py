"""A LightningModule around a plain ``nn.Module`` with a frozen layer, for the BEMA suite.

``run_script`` runs ``lightning_bema_script.py`` in a fresh Python (resume across
processes, DDP), as :func:`support.lightning_models.run_script` does for its script.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from support.lightning_models import FEATURES, subprocess_env

SCRIPT = Path(__file__).resolve().parent / "lightning_bema_script.py"


class FrozenFirstMLP(pl.LightningModule):
    """``self.net``, a plain ``nn.Sequential`` of two linear layers; the first one frozen.

    Logs ``loss`` per step and ``val_loss`` per validation (synchronised across ranks).

    Args:
        freeze: freeze the first layer.
        lr: SGD learning rate.
        seed: the initial weights.
    """

    def __init__(self, freeze: bool = True, lr: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )
        if freeze:
            self.net[0].requires_grad_(False)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def _loss(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def bema_of(callbacks: Sequence[Any]) -> Any:
    """The one neutral ``bema`` callback among a trainer's callbacks."""
    from callbridge.callbacks.bema import BEMACallback

    (bema,) = [
        c for cb in callbacks for c in getattr(cb, "callbacks", ()) if isinstance(c, BEMACallback)
    ]
    return bema


def run_script(*args: str, cwd: str | os.PathLike[str], timeout: float = 180) -> str:
    """Run ``lightning_bema_script.py ARGS`` in a fresh Python; fail with its output if it fails.

    The child leads its own process group, so that on a timeout the rank Lightning
    started (DDP) is killed with it instead of hanging in a collective.
    """
    command = [sys.executable, str(SCRIPT), *args]
    with subprocess.Popen(
        command, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            command_line = " ".join(args)
            raise AssertionError(
                f"lightning_bema_script.py {command_line} ran past {timeout} s (a hang?)\n{output}"
            ) from None
    if proc.returncode != 0:
        raise AssertionError(
            f"lightning_bema_script.py {' '.join(args)} exited with {proc.returncode}\n{output}"
        )
    return output
