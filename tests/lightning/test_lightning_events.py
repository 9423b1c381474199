"""``callbridge_lightning.callbacks``: the neutral events a real Lightning ``fit`` delivers, when.

The expected sequences are computed from the run's parameters in Lightning's
order within an optimizer step: the step ends (``on_train_batch_end`` of its last
micro-batch), ``ModelCheckpoint`` saves in that same hook (Lightning moves
checkpoint callbacks last), then the loop logs the step's metrics, then
validation runs (at the end of the epoch here).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

import callbridge_lightning
from support.lightning_models import BoringModel, loader, trainer
from support.neutral_spies import PayloadSpy
from support.recorder import Recorder

RECORDER = "support.recorder.Recorder"


def neutral(callbacks: list[Any], index: int = 0) -> Any:
    """The neutral callback inside the ``index``-th wrapper of a ``callbacks()`` list."""
    return callbridge_lightning.unwrap(callbacks)[index]


def expected_events(
    *, steps_per_epoch: int, epochs: int, log_every: int, save_every: int | None = None
) -> list[tuple[str, int]]:
    """What a Recorder sees in a run that validates at the end of every epoch."""
    events: list[tuple[str, int]] = [("train_begin", 0)]
    step = 0
    for _ in range(epochs):
        events.append(("epoch_begin", step))
        for _ in range(steps_per_epoch):
            events.append(("step_begin", step))
            step += 1
            events.append(("step_end", step))
            if save_every and step % save_every == 0:
                events.append(("save", step))
            if step % log_every == 0:
                events.append(("log:loss", step))
        # The contract: an epoch ends before its own evaluation (as under HF), whose
        # validation loop logs its metrics once, between begin and end.
        events.append(("epoch_end", step))
        events += [("evaluate_begin", step), ("log:val_loss", step), ("evaluate:val_loss", step)]
    events.append(("train_end", step))
    return events


@pytest.mark.parametrize("user_logger", [False, True], ids=["logger=False", "CSVLogger"])
def test_event_sequence_counts_optimizer_steps_logs_evaluations_and_saves(
    tmp_path: Path, user_logger: bool
) -> None:
    """Steps are optimizer steps; log, evaluate and save come at the trainer's own cadences."""
    accumulate, steps_per_epoch, epochs, log_every, save_every = 2, 4, 2, 3, 2
    callbacks = callbridge_lightning.callbacks(
        {"custom_callbacks": [RECORDER, "support.neutral_spies.PayloadSpy"]}
    )
    recorder: Recorder = neutral(callbacks, 0)
    spy: PayloadSpy = neutral(callbacks, 1)
    logger = CSVLogger(tmp_path / "logs", name="run") if user_logger else False
    checkpoint = ModelCheckpoint(every_n_train_steps=save_every, save_top_k=-1)
    tr = trainer(
        tmp_path,
        [*callbacks, checkpoint],
        max_epochs=epochs,
        accumulate_grad_batches=accumulate,
        log_every_n_steps=log_every,
        num_sanity_val_steps=2,  # runs validation before training: no evaluate event for it
        logger=logger,
        enable_checkpointing=True,
    )
    model = BoringModel()
    tr.fit(model, loader(steps_per_epoch * accumulate), loader(2, seed=1))

    assert tr.global_step == steps_per_epoch * epochs
    assert model.validation_batches == 2 + epochs * 2  # the sanity check did run
    assert recorder.events == expected_events(
        steps_per_epoch=steps_per_epoch, epochs=epochs, log_every=log_every, save_every=save_every
    )
    # The logs are what the module logged, with Lightning's "epoch" added as for every logger.
    assert [(step, sorted(logs)) for step, logs in spy.logs] == [
        (3, ["epoch", "loss"]),
        (4, ["epoch", "val_loss"]),
        (6, ["epoch", "loss"]),
        (8, ["epoch", "val_loss"]),
    ]
    assert [step for step, _ in spy.evaluations] == [4, 8]
    assert spy.evaluations[-1][1]["val_loss"] == spy.logs[-1][1]["val_loss"]

    # The user's logging setup is as the user made it.
    if user_logger:
        assert tr.loggers == [logger]
        assert tr.log_dir == str(tmp_path / "logs" / "run" / "version_0")
        assert checkpoint.dirpath == str(tmp_path / "logs" / "run" / "version_0" / "checkpoints")
        # ... and on_log saw the very values the CSV logger wrote.
        with open(Path(tr.log_dir) / "metrics.csv", newline="", encoding="utf-8") as fh:
            rows = [
                {k: float(v) for k, v in row.items() if v != "" and k != "step"}
                for row in csv.DictReader(fh)
            ]
        assert rows == [logs for _, logs in spy.logs]
    else:
        assert tr.loggers == []
        assert tr.log_dir == str(tmp_path)
        assert checkpoint.dirpath == str(tmp_path / "checkpoints")
    assert sorted(p.name for p in Path(checkpoint.dirpath).iterdir()) == sorted(
        f"epoch={(s - 1) // steps_per_epoch}-step={s}.ckpt" for s in (2, 4, 6, 8)
    )


def test_module_sees_the_loggers_the_user_chose_during_fit(tmp_path: Path) -> None:
    """With logger=False, ``self.logger`` stays None inside the loop, and on_log is delivered."""
    seen: list[tuple[Any, list[Any]]] = []

    class Probe(BoringModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            seen.append((self.logger, list(self.loggers)))
            return super().training_step(batch, batch_idx)

    callbacks = callbridge_lightning.callbacks({"custom_callbacks": [RECORDER]})
    tr = trainer(tmp_path, callbacks, max_steps=2, log_every_n_steps=1)
    tr.fit(Probe(), loader(4), loader(2, seed=1))

    assert seen == [(None, []), (None, [])]
    assert [e for e in neutral(callbacks).events if e[0].startswith("log")] == [
        ("log:loss", 1),
        ("log:loss", 2),
    ]


def test_run_state_matches_the_trainer(tmp_path: Path) -> None:
    """``run`` carries Lightning's step, plan, rank and model; the framework is "lightning"."""
    callbacks = callbridge_lightning.callbacks({"custom_callbacks": [RECORDER]})
    model = BoringModel()
    tr = trainer(tmp_path, callbacks, max_steps=6, log_every_n_steps=2)
    tr.fit(model, loader(4), loader(2, seed=1))

    recorder = neutral(callbacks)
    assert recorder.seen == {
        "framework": "lightning",
        "rank": 0,
        "world_size": 1,
        "is_main_process": True,
        "max_steps": 6,
    }
    run = callbacks[0]._bridge.session.run
    assert run.model is model
    assert run.output_dir == tmp_path
    assert run.native["trainer"] is tr


def test_should_stop_ends_training_after_that_step(tmp_path: Path) -> None:
    """A stop requested in on_step_end of step 5 ends the fit at step 5; train_end follows."""
    callbacks = callbridge_lightning.callbacks(
        {"custom_callbacks": [{"name": RECORDER, "args": {"stop_at": 5}}]}
    )
    tr = trainer(tmp_path, callbacks, max_steps=20, log_every_n_steps=50)
    tr.fit(BoringModel(), loader(8), loader(2, seed=1))

    assert tr.global_step == 5
    recorder: Recorder = neutral(callbacks)
    assert recorder.counters["step_end"] == 5
    assert recorder.events[-1] == ("train_end", 5)


def test_two_configurations_on_one_trainer_each_get_every_event(tmp_path: Path) -> None:
    """Two callbacks() lists side by side: both log taps deliver, and both come off after fit.

    State keys are unique within one configuration ("callbridge[<index>:<name>]"), so the
    Recorder sits at another index in the second one: Lightning refuses two stateful
    callbacks with one state_key.
    """
    first = callbridge_lightning.callbacks({"custom_callbacks": [RECORDER]})
    second = callbridge_lightning.callbacks(
        {"custom_callbacks": ["support.neutral_spies.PayloadSpy", RECORDER]}
    )
    tr = trainer(tmp_path, [*first, *second], max_epochs=1, log_every_n_steps=2)
    tr.fit(BoringModel(), loader(4), loader(2, seed=1))

    expected = expected_events(steps_per_epoch=4, epochs=1, log_every=2)
    assert neutral(first).events == expected
    assert neutral(second, 1).events == expected
    assert [step for step, _ in neutral(second, 0).logs] == [2, 4, 4]
    assert "log_metrics" not in vars(tr._logger_connector)  # Lightning's own method again
