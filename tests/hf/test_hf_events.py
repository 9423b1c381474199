"""Under a real ``transformers.Trainer``, neutral hooks come in HF's order, once per optimizer step.

Every test runs both ways a user can hand over a config:
``Trainer(callbacks=callbridge_hf.callbacks(cfg))`` and ``callbridge_hf.attach(trainer, cfg)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2LMHeadModel, default_data_collator

import callbridge_hf
from support.hf_models import (
    lm_examples,
    make_trainer,
    neutral_callbacks,
    tiny_gpt2_config,
    with_config,
)
from support.hf_probes import CheckpointProbe
from support.neutral_spies import PayloadSpy
from support.recorder import Recorder

MODES = pytest.mark.parametrize("mode", ["callbacks", "attach"])

RECORDER = {"name": "support.recorder.Recorder"}


def expected_events(
    *,
    max_steps: int,
    steps_per_epoch: int,
    logging_steps: int,
    eval_steps: int,
    save_steps: int,
) -> list[tuple[str, int]]:
    """What a Recorder sees under HF with step strategies for log, evaluation and save.

    HF counts the step before ``on_step_end`` (``step_end`` carries the new step),
    then logs, evaluates (``evaluate`` logs its metrics first) and saves, in that
    order; at ``max_steps`` it evaluates and saves once more if the cadence missed
    it. After the loop it logs a summary (``train_runtime``..., no recorded key).
    """
    events = [("train_begin", 0)]
    step = 0
    while step < max_steps:
        events.append(("epoch_begin", step))
        for _ in range(steps_per_epoch):
            events.append(("step_begin", step))
            step += 1
            events.append(("step_end", step))
            last = step == max_steps
            if step % logging_steps == 0:
                events.append(("log:loss", step))
            if step % eval_steps == 0 or last:
                events += [
                    ("evaluate_begin", step),
                    ("log:eval_loss", step),
                    ("evaluate:eval_loss", step),
                ]
            if step % save_steps == 0 or last:
                events.append(("save", step))
            if last:
                break
        events.append(("epoch_end", step))
    events += [("log", step), ("train_end", step)]
    return events


@MODES
def test_event_sequence_counts_optimizer_steps_under_accumulation(
    mode: str, tmp_path: Path
) -> None:
    """Train begin/end once, a step per optimizer step, log/evaluate/save on schedule."""
    batch, accumulation, n_train = 2, 2, 16
    plan = {"max_steps": 6, "logging_steps": 2, "eval_steps": 3, "save_steps": 4}
    config = {"custom_callbacks": [RECORDER, "support.hf_probes.CheckpointProbe"], "strict": True}
    trainer = with_config(
        mode,
        tmp_path,
        config,
        n_train=n_train,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=plan["max_steps"],
        logging_steps=plan["logging_steps"],
        eval_strategy="steps",
        eval_steps=plan["eval_steps"],
        save_strategy="steps",
        save_steps=plan["save_steps"],
    )
    recorder, probe = neutral_callbacks(trainer)
    assert isinstance(recorder, Recorder)
    assert isinstance(probe, CheckpointProbe)

    trainer.train()

    expected = expected_events(steps_per_epoch=n_train // (batch * accumulation), **plan)
    assert recorder.events == expected
    assert trainer.state.global_step == plan["max_steps"]
    # on_save comes after HF wrote the checkpoint: the folder is complete when the hook runs.
    save_steps = [step for name, step in expected if name == "save"]
    assert [step for step, _ in probe.saves] == save_steps
    for step, files in probe.saves:
        assert files is not None, f"checkpoint-{step} did not exist at on_save"
        assert {"trainer_state.json", "model.safetensors", "optimizer.pt"} <= set(files)

    # A standalone evaluation after training gets its begin hook too.
    recorder.events.clear()
    trainer.evaluate()
    step = plan["max_steps"]
    assert recorder.events == [
        ("evaluate_begin", step),
        ("log:eval_loss", step),
        ("evaluate:eval_loss", step),
    ]


@MODES
def test_evaluate_begin_once_per_dataset_of_a_dict(mode: str, tmp_path: Path) -> None:
    """A dict of eval datasets (HF re-enters evaluate): one begin per evaluation, none extra."""
    config = {"custom_callbacks": [{"name": "support.recorder.Recorder", "args": {"log_keys": []}}]}
    trainer = with_config(mode, tmp_path, config, n_eval=0)
    (recorder,) = neutral_callbacks(trainer)
    trainer.eval_dataset = {"a": lm_examples(2, seed=1), "b": lm_examples(2, seed=2)}

    trainer.evaluate()

    assert [name for name, _ in recorder.events] == [
        "evaluate_begin", "log", "evaluate",
        "evaluate_begin", "log", "evaluate",
    ]  # fmt: skip


@MODES
def test_stop_request_ends_training_at_that_step(mode: str, tmp_path: Path) -> None:
    """should_stop set in on_step_end at step 5 ends a 12-step run at step 5."""
    config = {"custom_callbacks": [{"name": "support.recorder.Recorder", "args": {"stop_at": 5}}]}
    trainer = with_config(mode, tmp_path, config, max_steps=12)
    (recorder,) = neutral_callbacks(trainer)

    trainer.train()

    assert trainer.state.global_step == 5
    assert recorder.counters["step_end"] == 5
    assert recorder.events[-1] == ("train_end", 5)


class CollatorFailure(RuntimeError):
    """What the failing collator raises."""


class ModelFailure(RuntimeError):
    """What the failing model raises."""


class FailingGPT2(GPT2LMHeadModel):
    """The tiny GPT-2, whose forward raises on its ``fail_on_call``-th call in training mode."""

    fail_on_call = 3

    def forward(  # the named inputs keep HF's unused-column filter working
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if self.training:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == self.fail_on_call:
                raise ModelFailure(f"forward call {self.calls}")
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
        )


EXCEPTION_CONFIG = {
    "custom_callbacks": ["support.recorder.Recorder", "support.neutral_spies.PayloadSpy"],
    "strict": True,
}


@MODES
def test_model_failure_reaches_on_exception_then_propagates(mode: str, tmp_path: Path) -> None:
    """A forward that raises in step 3: on_exception gets that exception, then train() re-raises."""
    torch.manual_seed(0)
    trainer = with_config(
        mode, tmp_path, EXCEPTION_CONFIG, model=FailingGPT2(tiny_gpt2_config()), max_steps=8
    )
    recorder, spy = neutral_callbacks(trainer)
    assert isinstance(spy, PayloadSpy)

    with pytest.raises(ModelFailure) as excinfo:
        trainer.train()

    assert spy.exceptions == [(2, excinfo.value)]
    assert recorder.events == [
        ("train_begin", 0), ("epoch_begin", 0),
        ("step_begin", 0), ("step_end", 1),
        ("step_begin", 1), ("step_end", 2),
        ("step_begin", 2), ("exception:ModelFailure", 2),
    ]  # fmt: skip


@MODES
def test_collator_failure_reaches_on_exception_then_propagates(mode: str, tmp_path: Path) -> None:
    """A collator that raises mid-run: on_exception at the step reached, then train() re-raises."""
    calls = 0

    def collate(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise CollatorFailure("batch 4")
        return default_data_collator(features)

    trainer = with_config(
        mode, tmp_path, EXCEPTION_CONFIG, max_steps=8, trainer_kwargs={"data_collator": collate}
    )
    recorder, spy = neutral_callbacks(trainer)

    with pytest.raises(CollatorFailure) as excinfo:
        trainer.train()

    # The dataloader may fetch a batch ahead, so the step reached is HF's to decide;
    # what the hook saw must be exactly where training stood, mid-run.
    reached = trainer.state.global_step
    assert 1 <= reached < 4
    assert spy.exceptions == [(reached, excinfo.value)]
    assert recorder.events[-1] == ("exception:CollatorFailure", reached)
    assert recorder.counters["step_end"] == reached
    assert "train_end" not in recorder.counters


def test_attach_returns_the_trainer_for_chaining(tmp_path: Path) -> None:
    """attach(trainer, cfg) returns the trainer: attach(SFTTrainer(...), cfg).train() reads well."""
    trainer = make_trainer(tmp_path)
    assert callbridge_hf.attach(trainer, {"custom_callbacks": [RECORDER]}) is trainer
