"""``attach`` injects the trainer's objects by parameter name; ``callbacks()`` has none."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import callbridge
import callbridge_hf
from support.hf_models import make_trainer, neutral_callbacks, tiny_tokenizer
from support.hf_probes import ContextProbe

PROBE = {"custom_callbacks": ["support.hf_probes.ContextProbe"], "strict": True}


def test_attach_injects_what_the_trainer_has(tmp_path: Path) -> None:
    """trainer, model, args, processing_class, accelerator arrive; no ref_model stays unset."""
    tokenizer = tiny_tokenizer()
    trainer = make_trainer(tmp_path, max_steps=1, trainer_kwargs={"processing_class": tokenizer})

    callbridge_hf.attach(trainer, PROBE)
    (probe,) = neutral_callbacks(trainer)
    assert isinstance(probe, ContextProbe)

    assert probe.trainer is trainer
    assert probe.model is trainer.model
    assert probe.args is trainer.args
    assert probe.processing_class is tokenizer
    assert probe.accelerator is trainer.accelerator
    assert probe.ref_model is None  # transformers.Trainer has no ref_model
    trainer.train()
    assert probe.run_model is trainer.model  # run.model: the same, unwrapped model


def test_attach_inject_adds_and_overrides(tmp_path: Path) -> None:
    """inject={...} fills names the trainer lacks and wins over the trainer's own."""
    trainer = make_trainer(tmp_path)
    reference, other_model = object(), object()

    callbridge_hf.attach(trainer, PROBE, inject={"ref_model": reference, "model": other_model})
    (probe,) = neutral_callbacks(trainer)

    assert probe.ref_model is reference
    assert probe.model is other_model
    assert probe.trainer is trainer


def test_required_trainer_under_callbacks_is_a_config_error_pointing_to_attach() -> None:
    with pytest.raises(callbridge.ConfigError) as excinfo:
        callbridge_hf.callbacks(PROBE)

    messages = [p.message for p in excinfo.value.problems]
    assert messages == [
        f"'support.hf_probes.ContextProbe' needs {name!r}, which is injected at build: "
        "attach it with an adapter (callbridge_hf.attach(trainer, ...)) or pass "
        f"inject={{{name!r}: ...}}"
        for name in ("trainer", "model")
    ]
    assert {p.key_path for p in excinfo.value.problems} == {"custom_callbacks[0].args"}


def test_required_trainer_under_callbacks_is_skipped_with_the_hint_when_not_strict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """strict = false: the callback is left out and the log says why, attach included."""
    caplog.set_level(logging.INFO, logger="callbridge")
    config = {"custom_callbacks": ["support.hf_probes.ContextProbe", "support.recorder.Recorder"]}

    built = callbridge_hf.callbacks(config)

    assert [type(cb.callback).__name__ for cb in built] == ["Recorder"]
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name == "callbridge" and r.levelno == logging.ERROR
    ]
    assert len(errors) == 1
    assert "skipped callback 'support.hf_probes.ContextProbe'" in errors[0]
    assert "callbridge_hf.attach(trainer, ...)" in errors[0]
