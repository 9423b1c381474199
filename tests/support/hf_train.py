"""Train the tiny GPT-2 under HF ``Trainer`` with a callbridge config, in a fresh process.

The HF suite runs this with ``sys.executable`` (resume across processes) or under
``torch.distributed.run`` (DDP on CPU with gloo). Each process writes what its
neutral callbacks saw to ``--result`` (``{rank}`` in the name is replaced)::

    python tests/support/hf_train.py --output-dir OUT --config '{"custom_callbacks": [...]}' \
        --result OUT/result-{rank}.json --max-steps 12 --save-steps 6 [--resume] [--mode callbacks]
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


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--config", required=True, help="the callbacks config as JSON")
    parser.add_argument("--result", required=True, help="where to write what the callbacks saw")
    parser.add_argument("--mode", choices=("attach", "callbacks"), default="attach")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--save-steps", type=int, default=0, help="0: no checkpoints")
    parser.add_argument("--eval-steps", type=int, default=0, help="0: no evaluation")
    parser.add_argument("--logging-steps", type=int, default=1_000_000)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--resume", action="store_true", help="train(resume_from_checkpoint=True)")
    parser.add_argument(
        "--mark",
        action="append",
        default=[],
        metavar="INDEX=VALUE",
        help="set counters['mark'] = VALUE on the INDEX-th neutral callback before training",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)

    import callbridge_hf
    from support.hf_models import make_trainer, neutral_callbacks

    config = json.loads(options.config)
    overrides: dict[str, Any] = {
        "max_steps": options.max_steps,
        "logging_steps": options.logging_steps,
        "gradient_accumulation_steps": options.grad_accum,
    }
    if options.save_steps:
        overrides.update(save_strategy="steps", save_steps=options.save_steps)
    if options.eval_steps:
        overrides.update(eval_strategy="steps", eval_steps=options.eval_steps)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        overrides.update(ddp_backend="gloo")

    if options.mode == "callbacks":
        native = callbridge_hf.callbacks(config)
        trainer = make_trainer(
            options.output_dir, callbacks=native, n_train=options.n_train, **overrides
        )
    else:
        trainer = make_trainer(options.output_dir, n_train=options.n_train, **overrides)
        callbridge_hf.attach(trainer, config)

    neutral = neutral_callbacks(trainer)
    for mark in options.mark:
        index, _, value = mark.partition("=")
        neutral[int(index)].counters["mark"] = int(value)

    trainer.train(resume_from_checkpoint=True if options.resume else None)

    rank = trainer.args.process_index
    result = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "callbacks": [
            {
                "class": type(cb).__name__,
                "events": getattr(cb, "events", None),
                "counters": getattr(cb, "counters", None),
                "seen": getattr(cb, "seen", None),
            }
            for cb in neutral
        ],
    }
    path = Path(options.result.replace("{rank}", str(rank)))
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    from support.hf_models import finish_distributed

    sys.exit(finish_distributed(main()))
