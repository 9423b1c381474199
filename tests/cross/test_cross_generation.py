"""``evaluation`` and ``prediction`` under Lightning: a LightningModule that keeps a HF model.

The same callbacks as tests/hf/test_hf_generation.py, configured the same way, with the
Hugging Face model as the module's ``model`` attribute and its ``tokenizer`` beside it;
a module without a model that generates (BoringModel) gets the clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

import callbridge_lightning
from support.hf_models import lm_examples, tiny_gpt2, tiny_tokenizer
from support.lightning_models import BoringModel, loader, trainer


class TinyLM(pl.LightningModule):
    """A tiny GPT-2 trained as a causal LM; ``model`` and ``tokenizer`` as attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_gpt2()
        self.tokenizer = tiny_tokenizer()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss: torch.Tensor = self.model(**batch).loss
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def lm_loader(n: int, seed: int) -> DataLoader[Any]:
    return DataLoader(lm_examples(n, seed=seed), batch_size=2)  # type: ignore[arg-type]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_evaluation_and_prediction_under_lightning(tmp_path: Path) -> None:
    prompts = ["the cat sat on", "a dog ran"]
    config = {
        "strict": True,
        "custom_callbacks": [
            {"name": "evaluation", "args": {"prompts": prompts, "max_new_tokens": 3,
                                            "generating_args": {"do_sample": False}}},
            {"name": "prediction", "args": {"prompts": prompts, "max_new_tokens": 2}},
        ],
    }  # fmt: skip
    tr = trainer(
        tmp_path, callbridge_lightning.callbacks(config), max_steps=4, val_check_interval=2
    )
    tr.fit(TinyLM(), lm_loader(8, 0), lm_loader(2, 1))

    records = read_jsonl(tmp_path / "generations.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert [s["prompt"] for s in record["samples"]] == prompts
        assert record["metrics"]["eval_gen_tokens"] == 3.0
        assert "val_loss" in record["metrics"]
        assert "eval_gen_exact_match" not in record["metrics"]  # no references given
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["prompt"] for r in rows] == prompts
    assert all(len(r["predict"].split()) <= 2 for r in rows)


@pytest.mark.parametrize("name", ["evaluation", "prediction"])
def test_a_module_that_cannot_generate_is_a_clear_error(name: str, tmp_path: Path) -> None:
    entry = {"name": name, "args": {"prompts": ["x"]}}
    config = {"callback_errors": "raise", "custom_callbacks": [entry]}
    tr = trainer(tmp_path, callbridge_lightning.callbacks(config), max_steps=2)
    with pytest.raises(RuntimeError) as info:
        tr.fit(BoringModel(), loader(2), loader(1, seed=1))
    assert str(info.value) == (
        f"{name} needs a model that can generate text (one with a generate() method, such as a "
        "transformers causal LM); this run's model is support.lightning_models.BoringModel, "
        "which cannot. Under Lightning keep the Hugging Face model as the LightningModule's "
        f"`model` attribute, or remove {name!r} from the configuration"
    )
