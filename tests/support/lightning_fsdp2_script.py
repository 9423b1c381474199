"""Fit a model sharded by FSDP2 under Lightning's ``ModelParallelStrategy`` with a config, in a
fresh process.

``python lightning_fsdp2_script.py --root DIR --config JSON --out PREFIX --max-steps N ...``

``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` on 2 CPU processes
(gloo): Lightning starts rank 1 itself by running this script again. The module's
``configure_model`` shards every layer of ``support.fsdp2_bema_script.Net`` and the net over
the data-parallel mesh. A checkpoint every ``--ckpt-every`` steps (a distributed checkpoint:
a folder), ``--ckpt-path`` to resume, ``--kill-at N`` to SIGKILL every rank after step N.
Each rank writes ``<out>.rank<N>.pt`` (``torch.save``): the final step and the bytes its ``bema``
keeps; rank 0 adds the trainable bytes of the full model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# tests/ on the path when run by file name, as the test suites see it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import callbridge_lightning
from support.fsdp2_bema_script import IN_FEATURES, Net, batch
from support.lightning_models import trainer, wait_for_every_rank

TRAIN_BATCHES = 12  # 6 per rank: an epoch is 6 optimizer steps
BATCH = 4


class ShardedNet(pl.LightningModule):
    """``self.net`` (:class:`Net`), sharded in ``configure_model``; logs ``val_loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in (self.net.frozen, self.net.hidden, self.net.norm, self.net.out):
            fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


def dataset(batches: int, seed: int) -> TensorDataset:
    """``batches * BATCH`` samples of :func:`support.fsdp2_bema_script.batch`'s task."""
    x, y = batch(seed, 0, size=batches * BATCH)
    assert x.shape[1] == IN_FEATURES
    return TensorDataset(x, y)


def validation_set() -> TensorDataset:
    """One batch per rank (the distributed sampler deals samples 0, 2, 4... to rank 0)."""
    return dataset(2, seed=777)


def main(argv: list[str] | None = None) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import ModelParallelStrategy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", required=True, help="default_root_dir")
    parser.add_argument("--config", required=True, help="the callbacks configuration (JSON)")
    parser.add_argument("--out", required=True, help="result file prefix")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--ckpt-every", type=int, default=0)
    parser.add_argument("--ckpt-path", default=None)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    callbacks: list[Any] = callbridge_lightning.callbacks(json.loads(args.config))
    if args.kill_at is not None:
        callbacks.append(_native_kill(args.kill_at))
    if args.ckpt_every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=Path(args.root) / "checkpoints", filename="step{step}",
                auto_insert_metric_name=False, every_n_train_steps=args.ckpt_every,
                save_top_k=-1,
            )
        )  # fmt: skip
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    tr = trainer(
        args.root, callbacks, strategy=strategy, devices=2, max_steps=args.max_steps,
        max_epochs=-1, log_every_n_steps=1, enable_checkpointing=bool(args.ckpt_every),
        val_check_interval=None, check_val_every_n_epoch=1,
    )  # fmt: skip
    model = ShardedNet()
    train = DataLoader(dataset(TRAIN_BATCHES, seed=1), batch_size=BATCH, shuffle=False)
    val = DataLoader(validation_set(), batch_size=BATCH, shuffle=False)
    tr.fit(model, train, val, ckpt_path=args.ckpt_path)
    from support.lightning_bema import bema_of

    bema = bema_of(tr.callbacks)
    plain = Net()
    result = {
        "rank": tr.global_rank,
        "world_size": tr.world_size,
        "global_step": tr.global_step,
        "resident": bema.resident_bytes(),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in plain.parameters()
                               if p.requires_grad),
    }  # fmt: skip
    torch.save(result, f"{args.out}.rank{tr.global_rank}.pt")
    wait_for_every_rank()


def _native_kill(step: int) -> pl.Callback:
    """A Lightning callback that SIGKILLs this process once ``global_step`` reaches ``step``."""

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)

    return Kill()


if __name__ == "__main__":
    main()
