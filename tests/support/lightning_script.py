"""A Lightning run in its own process: ``python lightning_script.py --root DIR --config FILE ...``.

The resume and DDP tests run it with ``sys.executable``. Under ``--ddp`` Lightning
starts the second rank itself by running this script again with the same
arguments. Each rank writes ``<out>.rank<N>.json``: the trainer's final step and,
for every ``support.recorder.Recorder``, its counters and what it saw of the run,
under its ``state_key``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# tests/ on the path when run by file name, as the test suites see it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import callbridge_lightning
from support.lightning_models import (
    BoringModel,
    loader,
    script_parser,
    script_trainer,
    wait_for_every_rank,
)


def main(argv: list[str] | None = None) -> None:
    parser = script_parser(__doc__, train_batches=4)
    parser.add_argument("--log-every", type=int, default=4, help="log_every_n_steps")
    parser.add_argument(
        "--mark",
        action="store_true",
        help="before fit, put counters['instance'] = its index into each Recorder",
    )
    args = parser.parse_args(argv)

    callbacks = callbridge_lightning.callbacks(args.config)
    # Each neutral callback under its state key (its id, or its name with #2, #3...).
    bridged = {
        built.key: built.callback
        for cb in callbacks
        if isinstance(cb, callbridge_lightning.NeutralCallback) and cb.first
        for built in cb._bridge.session.entries
    }
    if args.mark:
        for i, callback in enumerate(bridged.values()):
            if hasattr(callback, "counters"):
                callback.counters["instance"] = i
    tr = script_trainer(args, callbacks, log_every_n_steps=args.log_every)
    tr.fit(BoringModel(), loader(args.train_batches), loader(2, seed=1), ckpt_path=args.ckpt_path)
    result = {
        "rank": tr.global_rank,
        "world_size": tr.world_size,
        "global_step": tr.global_step,
        "counters": {k: cb.counters for k, cb in bridged.items() if hasattr(cb, "counters")},
        "seen": {k: cb.seen for k, cb in bridged.items() if hasattr(cb, "seen")},
    }
    Path(f"{args.out}.rank{tr.global_rank}.json").write_text(json.dumps(result), encoding="utf-8")
    wait_for_every_rank()


if __name__ == "__main__":
    main()
