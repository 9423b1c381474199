"""Fit ``FrozenFirstMLP`` under Lightning with a config holding ``bema``, in a fresh process.

``python lightning_bema_script.py --root DIR --config JSON --out PREFIX --max-steps N ...``

Under ``--ddp`` Lightning starts rank 1 itself by running this script again with
the same arguments. Each rank ``torch.save``s ``<out>.rank<N>.pt``: the final step,
what its ``bema`` callback holds, and the live trainable weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# tests/ on the path when run by file name, as the test suites see it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint

import callbridge_lightning
from support.bema_spies import trainable
from support.lightning_bema import FrozenFirstMLP, bema_of
from support.lightning_models import loader, trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="default_root_dir")
    parser.add_argument("--config", required=True, help="the callbacks configuration, as JSON")
    parser.add_argument("--out", required=True, help="result file prefix")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--train-batches", type=int, default=5, help="batches per epoch")
    parser.add_argument(
        "--ckpt-every", type=int, default=0, help="ModelCheckpoint every_n_train_steps"
    )
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint")
    parser.add_argument("--ddp", action="store_true", help="strategy='ddp' on 2 CPU processes")
    args = parser.parse_args(argv)

    callbacks = callbridge_lightning.callbacks(json.loads(args.config))
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
    tr = trainer(
        args.root,
        callbacks,
        max_steps=args.max_steps,
        max_epochs=-1,
        log_every_n_steps=1,
        enable_checkpointing=bool(args.ckpt_every),
        **distributed,
    )
    model = FrozenFirstMLP()
    tr.fit(model, loader(args.train_batches), loader(2, seed=1), ckpt_path=args.ckpt_path)
    bema = bema_of(tr.callbacks)
    result = {
        "rank": tr.global_rank,
        "world_size": tr.world_size,
        "global_step": tr.global_step,
        "holds_buffers": bema.holds_buffers,
        "names": list(bema.names),
        "state": bema.state_dict(),
        "live": trainable(model),
    }
    torch.save(result, f"{args.out}.rank{tr.global_rank}.pt")
    if dist.is_available() and dist.is_initialized():
        # Lightning does not wait for the rank it started: rank 0, the test's child,
        # exits only once every rank has written its result.
        dist.barrier()


if __name__ == "__main__":
    main()
