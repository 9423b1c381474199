"""A Lightning run in its own process: ``python lightning_script.py --root DIR --config FILE ...``.

The resume and DDP tests run it with ``sys.executable``. Under ``--ddp`` Lightning
starts the second rank itself by running this script again with the same
arguments. Each rank writes ``<out>.rank<N>.json``: the trainer's final step and,
for every ``support.recorder.Recorder``, its counters and what it saw of the run,
under its ``state_key``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# tests/ on the path when run by file name, as the test suites see it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint

import callbridge_lightning
from support.lightning_models import BoringModel, loader, trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="default_root_dir")
    parser.add_argument("--config", required=True, help="the callbacks configuration")
    parser.add_argument("--out", required=True, help="result file prefix")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--train-batches", type=int, default=4, help="batches per epoch")
    parser.add_argument("--log-every", type=int, default=4, help="log_every_n_steps")
    parser.add_argument(
        "--ckpt-every", type=int, default=0, help="ModelCheckpoint every_n_train_steps (0: none)"
    )
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint")
    parser.add_argument("--ddp", action="store_true", help="strategy='ddp' on 2 CPU processes")
    parser.add_argument(
        "--mark",
        action="store_true",
        help="before fit, put counters['instance'] = its index into each Recorder",
    )
    args = parser.parse_args(argv)

    callbacks = callbridge_lightning.callbacks(args.config)
    bridged = [cb for cb in callbacks if isinstance(cb, callbridge_lightning.NeutralCallback)]
    if args.mark:
        for i, cb in enumerate(bridged):
            if hasattr(cb.callback, "counters"):
                cb.callback.counters["instance"] = i
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
        log_every_n_steps=args.log_every,
        enable_checkpointing=bool(args.ckpt_every),
        **distributed,
    )
    tr.fit(BoringModel(), loader(args.train_batches), loader(2, seed=1), ckpt_path=args.ckpt_path)
    result = {
        "rank": tr.global_rank,
        "world_size": tr.world_size,
        "global_step": tr.global_step,
        "counters": {
            cb.state_key: cb.callback.counters for cb in bridged if hasattr(cb.callback, "counters")
        },
        "seen": {cb.state_key: cb.callback.seen for cb in bridged if hasattr(cb.callback, "seen")},
    }
    Path(f"{args.out}.rank{tr.global_rank}.json").write_text(json.dumps(result), encoding="utf-8")
    if dist.is_available() and dist.is_initialized():
        # Lightning does not wait for the ranks it started: rank 0, the test's child,
        # exits only once every rank has written its result.
        dist.barrier()


if __name__ == "__main__":
    main()
