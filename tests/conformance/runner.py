"""One schedule, three runners: the Driver, a real HF ``Trainer``, a real Lightning ``Trainer``.

A :class:`Schedule` says what a training does in trainer-neutral words (batches per
epoch, accumulation, steps or epochs, log/evaluation/save cadences, a stop); each
runner translates it into its trainer's own settings and returns what a
:class:`~conformance.recorder.ContractRecorder` saw. Run as a script, it trains in a
fresh process (a resume, a DDP rank) and writes the records as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

RECORDER = "conformance.recorder.ContractRecorder"
BATCH = 2  # examples per micro-batch under both trainers


@dataclass
class Schedule:
    """A training in neutral words.

    ``eval``/``save``: None, ``"epoch"``, or a step count. ``stop``: ``[hook, step]``.
    ``resume_at``: train again from the checkpoint of this step, in a fresh process.
    ``twins``: two recorders, reordered on resume. ``standalone``: one evaluation,
    no training. ``twice``: train twice on one trainer. ``ddp``: 2 processes, the stop
    on rank 1 only.
    """

    name: str
    batches: int = 8
    accum: int = 1
    max_steps: int | None = None
    epochs: int | None = None
    log: int | None = 1
    eval: int | str | None = None
    save: int | str | None = None
    stop: list[Any] | None = None
    resume_at: int | None = None
    twins: bool = False
    standalone: bool = False
    twice: bool = False
    ddp: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches / self.accum)

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return (self.epochs or 1) * self.steps_per_epoch

    def callbacks(self, *, tags: tuple[str, ...] = ("a",), path: str | None = None) -> list[Any]:
        entries = []
        for tag in tags:
            args: dict[str, Any] = {"tag": tag}
            if self.stop is not None:
                args.update(stop_hook=self.stop[0], stop_step=self.stop[1])
                if self.ddp:
                    args["stop_rank"] = 1
            if path is not None:
                args["path"] = path
            entries.append({"name": RECORDER, "args": args})
        return entries

    def config(self, **kwargs: Any) -> dict[str, Any]:
        return {"strict": True, "custom_callbacks": self.callbacks(**kwargs)}


def _recorders(callbacks: list[Any]) -> dict[str, Any]:
    from conformance.recorder import ContractRecorder

    return {cb.tag: cb for cb in callbacks if isinstance(cb, ContractRecorder)}


# -- the Driver: the contract itself --------------------------------------------------------


def run_driver(schedule: Schedule, *, rank: int = 0) -> dict[str, list[list[Any]]]:
    """What the contract says the recorders see."""
    import callbridge
    from callbridge.testing import Driver

    entries = callbridge.build_entries(schedule.config())
    kwargs: dict[str, Any] = {
        "max_steps": schedule.max_steps,
        "num_epochs": schedule.epochs,
        "accumulation": schedule.accum,
        "batches_per_epoch": schedule.batches,
        "logging_steps": schedule.log,
        "eval_steps": schedule.eval if isinstance(schedule.eval, int) else None,
        "save_steps": schedule.save if isinstance(schedule.save, int) else None,
        "eval_per_epoch": schedule.eval == "epoch",
        "save_per_epoch": schedule.save == "epoch",
        "rank": rank,
        "world_size": 2 if schedule.ddp else 1,
    }
    driver = Driver(entries, **kwargs)
    if schedule.standalone:
        driver.evaluate()
    else:
        driver.run()
        if schedule.twice:
            driver.run()
    return {tag: cb.events for tag, cb in _recorders([e.callback for e in entries]).items()}


# -- HF -------------------------------------------------------------------------------------


def hf_trainer(schedule: Schedule, out: Path, config: dict[str, Any]) -> Any:
    import callbridge_hf
    from support import hf_models

    args: dict[str, Any] = {
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": schedule.accum,
        "max_steps": schedule.max_steps if schedule.max_steps is not None else -1,
        "num_train_epochs": schedule.epochs or 1,
        "logging_steps": schedule.log or 1_000_000,
    }
    if schedule.eval == "epoch":
        args["eval_strategy"] = "epoch"
    elif schedule.eval is not None:
        args.update(eval_strategy="steps", eval_steps=schedule.eval)
    if schedule.save == "epoch":
        args["save_strategy"] = "epoch"
    elif schedule.save is not None:
        args.update(save_strategy="steps", save_steps=schedule.save)
    world = 2 if schedule.ddp else 1
    trainer = hf_models.make_trainer(
        out, n_train=schedule.batches * BATCH * world, n_eval=4, **args
    )
    return callbridge_hf.attach(trainer, config)


def run_hf(
    schedule: Schedule, out: Path, *, resume: str | None = None, tags: tuple[str, ...] = ("a",),
    path: str | None = None,
) -> dict[str, list[list[Any]]]:  # fmt: skip
    """Train under the HF Trainer; the recorders' events by tag."""
    import callbridge_hf

    trainer = hf_trainer(schedule, out, schedule.config(tags=tags, path=path))
    if schedule.standalone:
        trainer.evaluate()
    else:
        trainer.train(resume_from_checkpoint=resume)
        if schedule.twice:
            trainer.train()
    return {
        tag: cb.events
        for tag, cb in _recorders(callbridge_hf.unwrap(trainer.callback_handler.callbacks)).items()
    }


# -- Lightning ------------------------------------------------------------------------------


def lightning_trainer(
    schedule: Schedule, out: Path, config: dict[str, Any], *, save_at_eval: bool = False
) -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint

    import callbridge_lightning
    from support import lightning_models

    callbacks: list[Any] = list(callbridge_lightning.callbacks(config))
    options: dict[str, Any] = {
        "accumulate_grad_batches": schedule.accum,
        "max_steps": schedule.max_steps if schedule.max_steps is not None else -1,
        "max_epochs": schedule.epochs if schedule.epochs is not None else -1,
        "log_every_n_steps": schedule.log or 1_000_000,
    }
    if schedule.eval == "epoch":
        options.update(check_val_every_n_epoch=1, val_check_interval=1.0)
    elif schedule.eval is not None:
        # Lightning counts validation in batches: N optimizer steps are N * accum batches.
        options.update(
            check_val_every_n_epoch=None, val_check_interval=schedule.eval * schedule.accum
        )
    elif not schedule.standalone:
        options["limit_val_batches"] = 0
    checkpoints = out / "checkpoints"
    if save_at_eval:
        # The setting the differences table gives to align saves: save after each validation.
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoints, filename="step{step}", auto_insert_metric_name=False,
                save_top_k=-1, save_on_train_epoch_end=False,
            )
        )  # fmt: skip
    elif schedule.save == "epoch":
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoints, filename="step{step}", auto_insert_metric_name=False,
                save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True,
            )
        )  # fmt: skip
    elif schedule.save is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoints, filename="step{step}", auto_insert_metric_name=False,
                save_top_k=-1, every_n_train_steps=schedule.save,
            )
        )  # fmt: skip
    if schedule.ddp:
        options.update(strategy="ddp", devices=2)
    return lightning_models.trainer(
        out,
        callbacks,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        **options,
    )


def run_lightning(
    schedule: Schedule, out: Path, *, resume: str | None = None, tags: tuple[str, ...] = ("a",),
    path: str | None = None, save_at_eval: bool = False,
) -> dict[str, list[list[Any]]]:  # fmt: skip
    """Train under the Lightning Trainer; the recorders' events by tag."""
    import callbridge_lightning
    from support import lightning_models

    trainer = lightning_trainer(
        schedule, out, schedule.config(tags=tags, path=path), save_at_eval=save_at_eval
    )
    model = lightning_models.BoringModel()
    train = lightning_models.loader(schedule.batches * (2 if schedule.ddp else 1), batch_size=BATCH)
    val = lightning_models.loader(2, batch_size=BATCH, seed=1)
    if schedule.standalone:
        trainer.validate(model, val)
    else:
        trainer.fit(model, train, val, ckpt_path=resume)
        if schedule.twice:
            trainer.fit(model, train, val)
    if schedule.ddp:
        lightning_models.wait_for_every_rank()
    return {
        tag: cb.events
        for tag, cb in _recorders(callbridge_lightning.unwrap(trainer.callbacks)).items()
    }


# -- a fresh process --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trainer", choices=("hf", "lightning"), required=True)
    parser.add_argument("--schedule", required=True, help="a Schedule as JSON")
    parser.add_argument("--out", required=True, help="the training's folder")
    parser.add_argument("--result", required=True, help="where to write the events as JSON")
    parser.add_argument("--resume", default=None, help="the checkpoint to resume from")
    parser.add_argument("--tags", default="a", help="recorder tags, comma-separated, in order")
    parser.add_argument("--path", default=None, help="the recorders' JSON-lines file")
    parser.add_argument("--save-at-eval", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    schedule = Schedule(**json.loads(args.schedule))
    tags = tuple(args.tags.split(","))
    if args.trainer == "hf":
        events = run_hf(schedule, Path(args.out), resume=args.resume, tags=tags, path=args.path)
    else:
        events = run_lightning(
            schedule, Path(args.out), resume=args.resume, tags=tags, path=args.path,
            save_at_eval=args.save_at_eval,
        )  # fmt: skip
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if rank == 0:
        Path(args.result).write_text(json.dumps(events), encoding="utf-8")
    if schedule.ddp and args.trainer == "hf":  # run_hf returned: its trainer is gone
        from support.hf_models import finish_distributed

        sys.exit(finish_distributed())


def as_json(schedule: Schedule) -> str:
    return json.dumps(asdict(schedule))


if __name__ == "__main__":
    main()
