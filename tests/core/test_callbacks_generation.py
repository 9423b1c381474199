"""``evaluation``, ``prediction`` and ``metrics(stage=...)`` without a framework (the Driver).

Real generation runs under real trainers (tests/hf/test_hf_generation.py,
tests/cross/test_cross_generation.py, tests/llamafactory/); here: the arguments, the
clear error without a model that generates, and how generation settings are read.
"""

from __future__ import annotations

from typing import Any

import pytest

import callbridge
from callbridge.callbacks._generation import GenerationUnavailable, generation_kwargs
from callbridge.testing import Driver


@pytest.mark.parametrize("name", ["evaluation", "prediction"])
def test_without_a_model_that_generates_train_begin_says_why(name: str) -> None:
    [cb] = callbridge.build({"custom_callbacks": [{"name": name, "args": {"prompts": ["x"]}}]})
    with pytest.raises(GenerationUnavailable) as info:
        Driver([cb], max_steps=1, on_error="raise").run()
    assert str(info.value).startswith(f"{name} needs a model that can generate text")
    assert "this run's model is None, which cannot" in str(info.value)


def test_check_validates_the_arguments() -> None:
    problems = callbridge.check(
        {
            "custom_callbacks": [
                {"name": "evaluation", "args": {"num_samples": 0}},
                {"name": "prediction", "args": {"split": "test_dataset"}},
                {"name": "metrics", "args": {"stage": ""}},
            ]
        }
    )
    found = {p.key_path: p.message for p in problems}
    assert sorted(found) == [
        "custom_callbacks[0]",
        "custom_callbacks[1].args.split",
        "custom_callbacks[2]",
    ]
    assert "num_samples must be >= 1" in found["custom_callbacks[0]"]
    assert "'eval_dataset', 'train_dataset'" in found["custom_callbacks[1].args.split"]
    assert "stage must be a stage name" in found["custom_callbacks[2]"]


class GeneratingArguments:
    """Shaped like LLaMA-Factory's: to_dict(obey_generation_config=...)."""

    def to_dict(self, obey_generation_config: bool = False) -> dict[str, Any]:
        out = {"do_sample": False, "max_new_tokens": 1024, "default_system": "x"}
        if obey_generation_config:
            out.pop("default_system")
        return out


class Tokenizer:
    pad_token_id = 0
    eos_token_id = 2


def test_generation_settings_from_llamafactory_arguments_or_a_mapping() -> None:
    assert generation_kwargs(GeneratingArguments(), Tokenizer(), 8) == {
        "do_sample": False,
        "max_new_tokens": 8,
        "pad_token_id": 0,
        "eos_token_id": 2,
    }
    assert generation_kwargs({"num_beams": 2, "max_length": 20}, Tokenizer(), None) == {
        "num_beams": 2,
        "max_length": 20,
        "pad_token_id": 0,
        "eos_token_id": 2,
    }
    assert generation_kwargs(None, None, None) == {"max_new_tokens": 32}


def test_metrics_stage_tags_the_run_unless_a_stage_is_set() -> None:
    [metrics, log] = callbridge.build(
        {"custom_callbacks": [{"name": "metrics", "args": {"stage": "sft"}}, "log"]}
    )
    assert Driver([metrics, log], max_steps=1).run().run.tags == {"stage": "sft"}
    [stage, metrics] = callbridge.build(
        {
            "custom_callbacks": [
                {"name": "training_stage", "args": {"stage": "dpo"}},
                {"name": "metrics", "args": {"stage": "sft"}},
            ]
        }
    )
    assert Driver([stage, metrics], max_steps=1).run().run.tags == {"stage": "dpo"}


def test_reporter_rewrites_its_report_for_an_evaluation_after_train_end(tmp_path: Any) -> None:
    """LLaMA-Factory evaluates after train() returned: the report then counts that evaluation."""
    import json

    [reporter] = callbridge.build({"custom_callbacks": ["reporter"]})
    result = Driver([reporter], max_steps=2, output_dir=tmp_path).run()
    path = tmp_path / "callbridge_report.json"
    before = json.loads(path.read_text())
    reporter.on_evaluate(result.run, {"eval_loss": 0.25})
    after = json.loads(path.read_text())
    assert (after["evaluations"], after["best"]["value"]) == (before["evaluations"] + 1, 0.25)
    assert (after["status"], after["wall_time_s"]) == (before["status"], before["wall_time_s"])
