"""The HF adapter holds its trainer in no reference cycle: a trainer goes when the script lets go.

A trainer with callbridge's callbacks must go, with its model, optimizer and process
group, when the script drops its last reference, as a trainer without them does: not
with the next run of the cycle collector, which in a torchrun worker may be interpreter
exit, where a gloo process group released late aborts the rank ("terminate called
without an active exception"; seen in one LLaMA-Factory DDP run in eight). The cycle
collector is off in these tests, so only reference counting can free the trainer. The
DDP side (a worker's gloo threads end at ``destroy_process_group``, the trainer gone) is
checked by every HF DDP script, through ``support.hf_models.finish_distributed``.
"""

from __future__ import annotations

import gc
import inspect
import json
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import Trainer

import callbridge_hf
from support.hf_models import make_trainer

CONFIG = {
    "strict": True,
    "custom_callbacks": [
        {"name": "support.neutral_spies.NativeSeen"},
        {"name": "transformers.PrinterCallback"},  # a native one between two segments
        {"name": "early_stopping", "args": {"metric": "eval_loss", "early_stopping_patience": 5}},
        {"name": "log"},
    ],
}


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def with_callbacks(out: Path) -> Trainer:
    return make_trainer(out, callbacks=callbridge_hf.callbacks(CONFIG), **ARGS)


def with_attach(out: Path) -> Trainer:
    return callbridge_hf.attach(make_trainer(out, **ARGS), CONFIG)


def attached_twice(out: Path) -> Trainer:
    """Two sessions on one trainer: the second wraps the first's wrappers."""
    trainer = callbridge_hf.attach(make_trainer(out, **ARGS), CONFIG)
    return callbridge_hf.attach(trainer, {"custom_callbacks": ["log"]})


ARGS = {"max_steps": 4, "eval_strategy": "steps", "eval_steps": 2, "report_to": []}
BUILDERS = [with_callbacks, with_attach, attached_twice]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_a_trained_and_evaluated_trainer_goes_with_the_last_reference(
    build: Callable[[Path], Trainer], tmp_path: Path, no_cycle_collector: None
) -> None:
    trainer = build(tmp_path)
    trainer.train()
    trainer.evaluate()  # a standalone evaluation after training: the wrapper ran too
    [spy] = [cb for cb in callbridge_hf.unwrap(trainer.callback_handler.callbacks)
             if type(cb).__name__ == "NativeSeen"]  # fmt: skip
    hooks = [hook for hook, _, _ in spy.seen]
    assert hooks[0] == "train_begin"
    assert "train_end" in hooks
    assert hooks[-1] == "evaluate"
    # Held weakly, yet run.native["trainer"] was the trainer in every hook, and run.model
    # its model.
    assert {t for _, t, _ in spy.seen} == {id(trainer)}
    assert {m for _, _, m in spy.seen} == {id(trainer.model)}

    trainer_alive, model_alive = weakref.ref(trainer), weakref.ref(trainer.model)
    optimizer_alive = weakref.ref(trainer.optimizer)
    del trainer
    assert trainer_alive() is None
    assert model_alive() is None
    assert optimizer_alive() is None


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_a_trainer_that_never_trained_goes_too(
    build: Callable[[Path], Trainer], tmp_path: Path, no_cycle_collector: None
) -> None:
    trainer = build(tmp_path)
    alive = weakref.ref(trainer)
    del trainer
    assert alive() is None


def test_the_wrapped_methods_keep_their_signatures_and_names(tmp_path: Path) -> None:
    bare = make_trainer(tmp_path / "bare", **ARGS)
    trainer = with_attach(tmp_path / "attached")
    for name in ("train", "evaluate"):
        wrapped: Any = getattr(trainer, name)
        assert wrapped.__name__ == name
        assert inspect.signature(wrapped) == inspect.signature(getattr(bare, name))


def test_a_chained_attach_trains_and_the_trainer_keeps_its_class_name(tmp_path: Path) -> None:
    # attach(...).train(): nothing but the call holds the trainer, and it lives through it.
    config = {"custom_callbacks": [{"name": "log", "args": {"jsonl": "events.jsonl"}}]}
    output = callbridge_hf.attach(make_trainer(tmp_path, **ARGS), config).train()
    assert output.global_step == 4
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert (events[0], events[-1]) == ("train_begin", "train_end")

    trainer = with_attach(tmp_path / "again")
    assert isinstance(trainer, Trainer)
    assert (type(trainer).__name__, type(trainer).__module__) == ("Trainer", Trainer.__module__)
