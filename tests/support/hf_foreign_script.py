"""HF callbacks under Lightning in a process of their own (resume, DDP).

``python hf_foreign_script.py --root DIR --config FILE --out PREFIX --max-steps N
[--eval-every K] [--save-at-eval] [--ckpt-path CKPT] [--ddp]``

Trains :class:`support.hf_foreign.ScriptedBoring` with an evaluation every ``K`` steps;
``--save-at-eval`` adds a ``ModelCheckpoint`` that saves after each evaluation (as HF
saves after its evaluation). Each rank writes ``<out>.rank<N>.json``: the trainer's final
step and, for each HF callback, its ``ExportableState`` and the emulated ``TrainerState``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# tests/ on the path when run by file name, as the test suites see it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import callbridge_lightning
from support.hf_foreign import ScriptedBoring
from support.lightning_models import loader, trainer, wait_for_every_rank


def main(argv: list[str] | None = None) -> None:
    import argparse

    from lightning.pytorch.callbacks import ModelCheckpoint

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--train-batches", type=int, default=16, help="batches per epoch")
    parser.add_argument("--save-at-eval", action="store_true")
    parser.add_argument("--ckpt-path", default=None)
    parser.add_argument("--ddp", action="store_true")
    args = parser.parse_args(argv)

    callbacks = callbridge_lightning.callbacks(args.config)
    foreign = [
        cb
        for cb in callbridge_lightning.unwrap(callbacks)
        if isinstance(cb, callbridge_lightning.HFCallbackOnLightning)
    ]
    if args.save_at_eval:
        callbacks.append(
            ModelCheckpoint(
                dirpath=Path(args.root) / "checkpoints",
                filename="step{step}",
                auto_insert_metric_name=False,
                save_top_k=-1,
                save_on_train_epoch_end=False,
            )
        )
    distributed = {"strategy": "ddp", "devices": 2} if args.ddp else {}
    tr = trainer(
        args.root,
        callbacks,
        max_steps=args.max_steps,
        max_epochs=-1,
        log_every_n_steps=1,
        val_check_interval=args.eval_every,
        enable_checkpointing=args.save_at_eval,
        **distributed,
    )
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)  # the same initial weights in every process
    model = ScriptedBoring(args.eval_every)
    tr.fit(model, loader(args.train_batches), loader(2, seed=1), ckpt_path=args.ckpt_path)
    result = {
        "rank": tr.global_rank,
        "global_step": tr.global_step,
        "callbacks": [
            {
                "name": cb.name,
                "state": cb.callback.state() if hasattr(cb.callback, "state") else None,
                "best_metric": cb.state.best_metric,
                "log_history": cb.state.log_history,
            }
            for cb in foreign
        ],
    }
    Path(f"{args.out}.rank{tr.global_rank}.json").write_text(json.dumps(result), encoding="utf-8")
    wait_for_every_rank()


if __name__ == "__main__":
    main()
