"""Train the tiny GPT-2 (no dropout) under a callbridge config holding ``bema``, in a fresh process.

The BEMA suite runs this with ``sys.executable`` (resume across processes) or under
``torch.distributed.run`` (DDP on CPU with gloo). Each process ``torch.save``s to
``--result`` (``{rank}`` in the name is replaced) what its ``bema`` callback holds
and the live trainable weights it ended with::

    python tests/support/hf_bema_train.py --output-dir OUT --config '{"custom_callbacks": [...]}' \
        --result OUT/result-{rank}.pt --max-steps 20 --save-steps 10 [--eval-steps 5] [--resume]

Dropout is off so that runs compare bit for bit whatever else consumes the random
number generator (TRL's BEMACallback does, at train begin).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

#: GPT-2 without dropout.
NO_DROPOUT: dict[str, float] = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def no_dropout_gpt2(seed: int = 0) -> Any:
    """:func:`support.hf_models.tiny_gpt2` with every dropout off."""
    from support.hf_models import tiny_gpt2

    return tiny_gpt2(seed, **NO_DROPOUT)


def bema_of(trainer: Any) -> Any:
    """The one neutral ``bema`` callback on ``trainer``."""
    from callbridge.callbacks.bema import BEMACallback
    from support.hf_models import neutral_callbacks

    (bema,) = [cb for cb in neutral_callbacks(trainer) if isinstance(cb, BEMACallback)]
    return bema


def run_script(
    *args: str, cwd: str | os.PathLike[str], nproc: int = 1, timeout: float = 300
) -> str:
    """Run this script with ``args`` as :func:`support.hf_models.run_script` runs its own."""
    from support.hf_models import run_script as run

    return run(*args, cwd=cwd, nproc=nproc, timeout=timeout, script=Path(__file__).resolve())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--config", required=True, help="the callbacks config as JSON")
    parser.add_argument("--result", required=True, help="where to torch.save what bema holds")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--save-steps", type=int, default=0, help="0: no checkpoints")
    parser.add_argument("--eval-steps", type=int, default=0, help="0: no evaluation")
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--resume", action="store_true", help="train(resume_from_checkpoint=True)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)

    import torch

    import callbridge_hf
    from support.bema_spies import trainable
    from support.hf_models import make_trainer

    overrides: dict[str, Any] = {"max_steps": options.max_steps}
    if options.save_steps:
        overrides.update(save_strategy="steps", save_steps=options.save_steps)
    if options.eval_steps:
        overrides.update(eval_strategy="steps", eval_steps=options.eval_steps)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        overrides.update(ddp_backend="gloo")

    trainer = make_trainer(
        options.output_dir, model=no_dropout_gpt2(), n_train=options.n_train, **overrides
    )
    callbridge_hf.attach(trainer, json.loads(options.config))
    trainer.train(resume_from_checkpoint=True if options.resume else None)

    bema = bema_of(trainer)
    rank = trainer.args.process_index
    result = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "holds_buffers": bema.holds_buffers,
        "names": list(bema.names),
        "state": bema.state_dict(),
        "live": trainable(trainer.model),
    }
    torch.save(result, options.result.replace("{rank}", str(rank)))
    return 0


if __name__ == "__main__":
    from support.hf_models import finish_distributed

    sys.exit(finish_distributed(main()))
