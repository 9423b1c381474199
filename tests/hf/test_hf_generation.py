"""``evaluation`` and ``prediction`` under a real HF ``Trainer``: text generated, scored, written.

A tiny GPT-2 with the in-code word tokenizer; the evaluation set is supervised rows whose
labels mask the prompt with -100, as LLaMA-Factory and TRL prepare them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from support.hf_models import WORDS, make_trainer, tiny_tokenizer, with_config

PROMPT, ANSWER = "the cat sat on", "the mat"


def supervised_rows(n: int) -> list[dict[str, torch.Tensor]]:
    tokenizer = tiny_tokenizer()
    prompt = tokenizer(PROMPT)["input_ids"]
    answer = [*tokenizer(ANSWER)["input_ids"], WORDS.index("[EOS]")]
    ids = torch.tensor(prompt + answer)
    labels = torch.tensor([-100] * len(prompt) + answer)
    return [
        {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        for _ in range(n)
    ]


def trainer_with(tmp_path: Path, entries: list[Any], **args: Any) -> Any:
    trainer = make_trainer(
        tmp_path,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        trainer_kwargs={"processing_class": tiny_tokenizer()},
        **args,
    )
    trainer.train_dataset = supervised_rows(8)
    trainer.eval_dataset = supervised_rows(3)
    import callbridge_hf

    return callbridge_hf.attach(trainer, {"strict": True, "custom_callbacks": entries})


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_evaluation_generates_at_each_evaluation_and_adds_its_metrics(tmp_path: Path) -> None:
    entries = [
        {"name": "evaluation", "args": {"num_samples": 2, "max_new_tokens": 3,
                                        "generating_args": {"do_sample": False}}},
        {"name": "log", "args": {"jsonl": "events.jsonl"}},
    ]  # fmt: skip
    trainer = trainer_with(tmp_path, entries)
    trainer.train()

    records = read_jsonl(tmp_path / "generations.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert [s["prompt"] for s in record["samples"]] == [PROMPT, PROMPT]
        assert {s["reference"] for s in record["samples"]} == {ANSWER}
        assert all(len(s["generated"].split()) <= 3 for s in record["samples"])
        assert record["metrics"]["eval_gen_tokens"] == 3.0  # greedy, no early EOS at 3 tokens
        assert 0.0 <= record["metrics"]["eval_gen_exact_match"] <= 1.0
        assert "eval_loss" in record["metrics"]
    # log, after evaluation in the list, saw the generation metrics with the evaluation's.
    evaluated = [r for r in read_jsonl(tmp_path / "events.jsonl") if r["event"] == "evaluate"]
    assert [("eval_gen_tokens" in r, "eval_loss" in r) for r in evaluated] == [(True, True)] * 2


def test_prediction_writes_one_prediction_per_example_at_train_end(tmp_path: Path) -> None:
    entries = [{"name": "prediction", "args": {"max_new_tokens": 2}}]
    trainer = trainer_with(tmp_path, entries)
    trainer.train()
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert len(rows) == 3
    assert {(r["prompt"], r["label"]) for r in rows} == {(PROMPT, ANSWER)}
    assert all(isinstance(r["predict"], str) and len(r["predict"].split()) <= 2 for r in rows)


def test_prediction_on_given_prompts(tmp_path: Path) -> None:
    entries = [{"name": "prediction", "args": {"prompts": ["a dog", "the bird"],
                                               "max_new_tokens": 2}}]  # fmt: skip
    trainer_with(tmp_path, entries).train()
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [(r["prompt"], "label" in r) for r in rows] == [("a dog", False), ("the bird", False)]


class Regressor(torch.nn.Module):
    """A model HF can train that cannot generate text."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


@pytest.mark.parametrize("name", ["evaluation", "prediction"])
def test_a_model_that_cannot_generate_is_a_clear_error_at_train_begin(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"x": torch.randn(4), "labels": torch.tensor(0.5)} for _ in range(8)]
    config = {"callback_errors": "raise", "custom_callbacks": [name]}
    trainer = with_config(
        "attach", tmp_path, config, model=Regressor(), max_steps=2, remove_unused_columns=False
    )
    trainer.train_dataset = rows
    with pytest.raises(RuntimeError) as info:
        trainer.train()
    assert str(info.value).startswith(
        f"{name} needs a model that can generate text (one with a generate() method, such as a "
        f"transformers causal LM); this run's model is {__name__}.Regressor, which cannot."
    )
    caplog.clear()
    # Under the default policy the run trains on, and the reason is logged once.
    caplog.set_level(logging.ERROR, logger="callbridge")
    trainer = with_config(
        "attach", tmp_path, {"custom_callbacks": [name]}, model=Regressor(), max_steps=2,
        remove_unused_columns=False,
    )  # fmt: skip
    trainer.train_dataset = rows
    trainer.train()
    assert trainer.state.global_step == 2
    assert any("needs a model that can generate" in str(r.exc_info[1]) for r in caplog.records
               if r.exc_info)  # fmt: skip
