"""A training a test preempts or operates: ``python preemption_script.py hf|lightning --root DIR``.

Trains the tiny GPT-2 under HF's ``Trainer`` or the BoringModel under Lightning with
the configuration in ``--config``; ``--resume`` continues from the last checkpoint
(HF ``checkpoint-N``, Lightning ``checkpoints/step=N.ckpt``). Writes
``<root>/result-<attempt>.json``: the final step, the checkpoints on disk, and each
neutral callback's ``counters``/``received``/``stopped_at_step`` where it has them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def hf(args: argparse.Namespace) -> tuple[int, list[Any], list[str]]:
    import callbridge_hf
    from support.hf_models import make_trainer, neutral_callbacks

    trainer = make_trainer(args.root, max_steps=args.max_steps, logging_steps=args.log_every)
    callbridge_hf.attach(trainer, args.config)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    checkpoints = sorted(p.name for p in Path(args.root).glob("checkpoint-*"))
    return trainer.state.global_step, neutral_callbacks(trainer), checkpoints


def lightning(args: argparse.Namespace) -> tuple[int, list[Any], list[str]]:
    import torch

    import callbridge_lightning
    from support.lightning_models import BoringModel, loader, trainer

    callbacks = callbridge_lightning.callbacks(args.config)
    tr = trainer(args.root, callbacks, max_steps=args.max_steps, max_epochs=-1,
                 log_every_n_steps=args.log_every, limit_val_batches=0)  # fmt: skip
    folder = Path(args.root) / "checkpoints"
    ckpt = None
    if args.resume:
        ckpt = str(max(folder.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1])))
    torch.manual_seed(0)
    tr.fit(BoringModel(), loader(8), ckpt_path=ckpt)
    checkpoints = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    return tr.global_step, callbridge_lightning.unwrap(callbacks), checkpoints


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("hf", "lightning"))
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--attempt", default="0")
    args = parser.parse_args()
    step, neutral, checkpoints = (hf if args.framework == "hf" else lightning)(args)
    result = {
        "global_step": step,
        "checkpoints": checkpoints,
        "callbacks": {
            type(cb).__name__: {
                k: getattr(cb, k)
                for k in (
                    "counters",
                    "events",
                    "received",
                    "stopped_at_step",
                    "early_stopping_patience",
                    "offset",
                    "done",
                )
                if hasattr(cb, k)
            }
            for cb in neutral
        },
    }
    out = Path(args.root) / f"result-{args.attempt}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
