"""The promise itself: one callback, one config, the same events under HF Trainer and Lightning.

Both runs: 6 optimizer steps with gradient accumulation 2, a log every 2 steps, an
evaluation and a checkpoint every 3 steps. The recorded sequences are compared after
normalising only the documented differences (see README, "Event mapping"):

* HF logs a final summary (``train_runtime``...) after the last epoch; Lightning does not.
* Lightning's ModelCheckpoint saves inside ``on_train_batch_end``, so within a step ``save``
  comes before the step's log and evaluation; under HF it comes after them.
* The evaluation metric is named by the user's code: ``eval_loss`` under HF (HF prefixes
  it), ``val_loss`` in our LightningModule.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

import callbridge_hf
import callbridge_lightning
from support import hf_models, lightning_models
from support.recorder import Recorder

pytestmark = pytest.mark.filterwarnings(*lightning_models.LIGHTNING_NOISE)

STEPS, ACCUMULATE, LOG_EVERY, EVAL_EVERY = 6, 2, 2, 3
CONFIG = {"custom_callbacks": [{"name": "support.recorder.Recorder"}], "strict": True}


def run_hf(tmp_path: Path, config: dict[str, Any] = CONFIG) -> Recorder:
    trainer = hf_models.make_trainer(
        tmp_path / "hf",
        n_train=STEPS * ACCUMULATE * 2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ACCUMULATE,
        max_steps=STEPS,
        logging_steps=LOG_EVERY,
        eval_strategy="steps",
        eval_steps=EVAL_EVERY,
        save_strategy="steps",
        save_steps=EVAL_EVERY,
    )
    callbridge_hf.attach(trainer, config)
    trainer.train()
    return _recorder(trainer.callback_handler.callbacks)


def run_lightning(tmp_path: Path, config: dict[str, Any] = CONFIG) -> Recorder:
    callbacks = [
        *callbridge_lightning.callbacks(config),
        ModelCheckpoint(
            dirpath=tmp_path / "pl" / "ckpt", every_n_train_steps=EVAL_EVERY, save_top_k=-1
        ),
    ]
    trainer = lightning_models.trainer(
        tmp_path / "pl",
        callbacks,
        max_steps=STEPS,
        accumulate_grad_batches=ACCUMULATE,
        log_every_n_steps=LOG_EVERY,
        val_check_interval=EVAL_EVERY * ACCUMULATE,  # counted in batches
        limit_val_batches=2,
        enable_checkpointing=True,
        num_sanity_val_steps=2,  # must not show up as an evaluation
    )
    trainer.fit(
        lightning_models.BoringModel(),
        lightning_models.loader(STEPS * ACCUMULATE),
        lightning_models.loader(2, seed=1),
    )
    return _recorder(trainer.callbacks)


def _recorder(callbacks: list[Any]) -> Recorder:
    return next(
        c for cb in callbacks for c in getattr(cb, "callbacks", ()) if isinstance(c, Recorder)
    )


def normalise(events: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Apply the documented differences, nothing else."""
    out: list[tuple[str, int]] = []
    epoch_ended = False
    for name, step in events:
        if name == "epoch_end":
            epoch_ended = True
        if name.startswith("log") and epoch_ended and "val_loss" not in name:
            continue  # HF's closing summary log
        out.append((re.sub(r"\bval_loss", "eval_loss", name), step))
    # Within a step, put save last (Lightning saves inside on_train_batch_end).
    result: list[tuple[str, int]] = []
    pending_saves: list[tuple[str, int]] = []
    for name, step in out:
        if name == "save":
            pending_saves.append((name, step))
            continue
        if name in ("step_begin", "epoch_end", "train_end"):
            result += pending_saves
            pending_saves = []
        result.append((name, step))
    return result + pending_saves


def expected_sequence() -> list[tuple[str, int]]:
    """What the contract promises for this run, computed from its parameters."""
    seq: list[tuple[str, int]] = [("train_begin", 0), ("epoch_begin", 0)]
    for step in range(1, STEPS + 1):
        seq += [("step_begin", step - 1), ("step_end", step)]
        if step % LOG_EVERY == 0:
            seq.append(("log:loss", step))
        if step % EVAL_EVERY == 0:
            seq += [("evaluate_begin", step), ("log:eval_loss", step), ("evaluate:eval_loss", step)]
            seq.append(("save", step))
    return [*seq, ("epoch_end", STEPS), ("train_end", STEPS)]


def test_same_events_same_steps_under_both_trainers(tmp_path: Path) -> None:
    """The recorded sequences are equal, and equal to the contract computed from the schedule."""
    hf = run_hf(tmp_path)
    pl = run_lightning(tmp_path)
    assert normalise(hf.events) == expected_sequence()
    assert normalise(pl.events) == normalise(hf.events)
    assert hf.seen["framework"] == "hf"
    assert pl.seen["framework"] == "lightning"
    for seen in (hf.seen, pl.seen):
        assert (seen["rank"], seen["world_size"], seen["is_main_process"]) == (0, 1, True)
        assert seen["max_steps"] == STEPS


@pytest.mark.parametrize("runner", [run_hf, run_lightning], ids=["hf", "lightning"])
def test_stop_request_at_step_5_ends_training_at_step_5(tmp_path: Path, runner: Any) -> None:
    """A neutral ``should_stop`` at step 5 ends either trainer at step 5; train_end still comes."""
    config = {"custom_callbacks": [{"name": "support.recorder.Recorder", "args": {"stop_at": 5}}]}
    recorder = runner(tmp_path, config)
    steps = [step for name, step in recorder.events if name == "step_end"]
    assert steps == [1, 2, 3, 4, 5]
    assert recorder.events[-1] == ("train_end", 5)


@pytest.mark.parametrize("runner", [run_hf, run_lightning], ids=["hf", "lightning"])
def test_failing_callback_is_isolated_and_summarised(
    tmp_path: Path, runner: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback raising in every hook: training completes, one log per hook, counts at the end."""
    config = {
        "custom_callbacks": [
            {"name": "support.recorder.Recorder", "args": {"fail": True}},
            {"name": "support.recorder.Recorder"},
        ]
    }
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        runner(tmp_path, config)
    first_errors = [r for r in caplog.records if "raised in" in r.getMessage()]
    hooks = sorted(r.args[1] for r in first_errors)  # type: ignore[index]
    assert hooks == sorted(set(hooks)), "each hook is logged once"
    assert {"on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_train_end"} <= set(hooks)
    summary = [r for r in caplog.records if "callback errors:" in r.getMessage()]
    assert len(summary) == 1
    assert f"on_step_end x{STEPS}" in summary[0].getMessage()
