"""Fit ``FrozenFirstMLP`` under Lightning with a config holding ``bema``, in a fresh process.

``python lightning_bema_script.py --root DIR --config JSON --out PREFIX --max-steps N ...``

Under ``--ddp`` Lightning starts rank 1 itself by running this script again with
the same arguments. Each rank ``torch.save``s ``<out>.rank<N>.pt``: the final step,
what its ``bema`` callback holds, and the live trainable weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# tests/ on the path when run by file name, as the test suites see it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import callbridge_lightning
from support.bema_spies import trainable
from support.lightning_bema import FrozenFirstMLP, bema_of
from support.lightning_models import loader, script_parser, script_trainer, wait_for_every_rank


def main(argv: list[str] | None = None) -> None:
    args = script_parser(__doc__, train_batches=5).parse_args(argv)
    callbacks = callbridge_lightning.callbacks(json.loads(args.config))  # JSON text here
    tr = script_trainer(args, callbacks, log_every_n_steps=1)
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
    wait_for_every_rank()


if __name__ == "__main__":
    main()
