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

    extra: dict[str, Any] = {}
    if args.ddp:  # under torchrun
        extra.update(ddp_backend="gloo")
    if args.nan_at is not None:
        extra.update(model=_nan_gpt2(args.nan_at, args.nan_rank))
    trainer = make_trainer(
        args.root, max_steps=args.max_steps, logging_steps=args.log_every, **extra
    )
    callbridge_hf.attach(trainer, args.config)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    checkpoints = sorted(p.name for p in Path(args.root).glob("checkpoint-*"))
    args.rank = trainer.args.process_index
    return trainer.state.global_step, neutral_callbacks(trainer), checkpoints


def _nan_gpt2(nan_at: int, rank: int | None) -> Any:
    """The tiny GPT-2, whose training loss is NaN from step ``nan_at`` on (on ``rank`` only)."""
    import os

    import torch
    from transformers import GPT2LMHeadModel

    from support.hf_models import tiny_gpt2_config

    class NaNAtStep(GPT2LMHeadModel):
        calls = 0

        def forward(  # the named inputs: HF keeps the dataset columns the signature names
            self, input_ids: Any = None, attention_mask: Any = None, labels: Any = None,
            **kwargs: Any,
        ) -> Any:  # fmt: skip
            out = super().forward(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )
            if self.training:
                self.calls += 1  # one forward per optimizer step (no accumulation)
                here = rank is None or int(os.environ.get("RANK", "0")) == rank
                if self.calls >= nan_at and here:
                    out.loss = out.loss * float("nan")
            return out

    torch.manual_seed(0)
    return NaNAtStep(tiny_gpt2_config())


def lightning(args: argparse.Namespace) -> tuple[int, list[Any], list[str]]:
    import torch

    import callbridge_lightning
    from support.lightning_models import loader, trainer

    callbacks = callbridge_lightning.callbacks(args.config)
    distributed = {"strategy": "ddp", "devices": 2} if args.ddp else {}
    tr = trainer(args.root, callbacks, max_steps=args.max_steps, max_epochs=-1,
                 log_every_n_steps=args.log_every, limit_val_batches=0, **distributed)  # fmt: skip
    folder = Path(args.root) / "checkpoints"
    ckpt = None
    if args.resume:
        ckpt = str(max(folder.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1])))
    torch.manual_seed(0)
    NaNOnRank = _nan_model()
    tr.fit(NaNOnRank(args.nan_at, args.nan_rank), loader(8), ckpt_path=ckpt)
    checkpoints = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    args.rank = tr.global_rank
    return tr.global_step, callbridge_lightning.unwrap(callbacks), checkpoints


def _nan_model() -> Any:
    import torch

    from support.lightning_models import BoringModel

    class NaNOnRank(BoringModel):
        """A BoringModel whose training loss is NaN from step ``nan_at`` on, on ``rank`` only."""

        def __init__(self, nan_at: int | None, rank: int | None) -> None:
            super().__init__()
            self.nan_at, self.nan_rank = nan_at, rank

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            step = self.global_step + 1  # the optimizer step this batch belongs to
            # The batch of step s is drawn from a generator seeded with s: on a mid-epoch
            # resume Lightning restarts a plain DataLoader's epoch, and the data must not
            # depend on where the loader stands for a resumed run to equal an uninterrupted one.
            g = torch.Generator().manual_seed(step)
            x = torch.randn(batch[0].shape, generator=g)
            loss = self._loss((x, x.sum(dim=1, keepdim=True)))
            bad_rank = self.nan_rank is None or self.global_rank == self.nan_rank
            if self.nan_at is not None and step >= self.nan_at and bad_rank:
                loss = loss * float("nan")
            self.log("loss", loss)
            return loss

    return NaNOnRank


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("hf", "lightning"))
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--attempt", default="0")
    parser.add_argument(
        "--ddp", action="store_true", help="DDP: Lightning on 2 CPU processes; HF under torchrun"
    )
    parser.add_argument("--nan-at", type=int, default=None, help="a NaN loss from this step")
    parser.add_argument("--nan-rank", type=int, default=None, help="... on this rank only")
    args = parser.parse_args()
    args.rank = 0
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
                    "applied",
                )
                if hasattr(cb, k)
            }
            for cb in neutral
        },
    }
    suffix = f".rank{args.rank}" if args.ddp else ""
    out = Path(args.root) / f"result-{args.attempt}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result), encoding="utf-8")
    if args.ddp:
        from support.lightning_models import wait_for_every_rank

        wait_for_every_rank()
        if args.framework == "hf":  # hf() returned: its trainer is gone
            from support.hf_models import finish_distributed

            return finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
