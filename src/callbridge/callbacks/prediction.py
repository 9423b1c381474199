"""``prediction``: at train end, a prediction for each example of a dataset, written to a file."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import attrs

from .._protocol import Callback, Run
from . import _generation as gen
from ._paths import in_output_dir

logger = logging.getLogger("callbridge.prediction")


def _positive(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 or None (got {value})")


@attrs.define
class PredictionCallback(Callback):
    """When training ends, complete every prompt of a dataset and write the predictions.

    One JSON object per example (``prompt``, ``predict`` and, where the data has one,
    ``label``: the fields of LLaMA-Factory's ``generated_predictions.jsonl``) goes to
    ``filename`` in the output directory, written whole at train end (a temporary file
    renamed into place). The prompts are ``prompts`` if given, else the rows of
    ``dataset_module[split]`` (LLaMA-Factory's datasets, injected under
    ``callbridge-lf``), else the trainer's dataset of that split (HF). Generation uses
    the run's settings (``generating_args``, injected under ``callbridge-lf``, or a
    mapping). Under Lightning give ``prompts`` (or inject ``dataset_module``) and keep
    the Hugging Face model as the LightningModule's ``model`` attribute; a run whose
    model cannot generate fails at train begin with a message saying so.

    Args:
        dataset_module: ``{"train_dataset": ..., "eval_dataset": ...}`` (injected).
        split: which dataset of it to predict on.
        prompts: the prompts to complete instead of a dataset.
        max_samples: predict on at most this many examples (None: all).
        generating_args: generation settings (LLaMA-Factory's ``GeneratingArguments``
            or a mapping of ``generate`` keyword arguments).
        max_new_tokens: overrides the settings' length (default: theirs, else 32).
        filename: the JSON lines file; a relative path is taken in the output directory.
        tokenizer: the tokenizer (injected; default: the trainer's or the module's).
    """

    rank_zero_only: ClassVar[bool] = True

    dataset_module: Any = attrs.field(default=None, repr=False)
    split: Literal["eval_dataset", "train_dataset"] = "eval_dataset"
    prompts: list[str] | None = None
    max_samples: int | None = attrs.field(default=64, validator=_positive)
    generating_args: Any = attrs.field(default=None, repr=False)
    max_new_tokens: int | None = attrs.field(default=None, validator=_positive)
    filename: str = "predictions.jsonl"
    tokenizer: Any = attrs.field(default=None, repr=False)

    written: int = attrs.field(default=0, init=False)

    def path(self, run: Run) -> Path | None:
        """Where the predictions go for this run, if anywhere."""
        return in_output_dir(run, self.filename)

    def on_train_begin(self, run: Run) -> None:
        gen.generating_model(run, "prediction")
        gen.find_tokenizer(run, self.tokenizer, "prediction")

    def _source(self, run: Run) -> Any:
        if self.prompts is not None:
            return self.prompts
        dataset = None
        if isinstance(self.dataset_module, Mapping):
            dataset = self.dataset_module.get(self.split)
        if dataset is None:
            dataset = getattr(run.native.get("trainer"), self.split, None)
        if isinstance(dataset, dict):  # several evaluation sets: the first one
            dataset = next(iter(dataset.values()), None)
        if dataset is None:
            raise gen.GenerationUnavailable(
                f"prediction: no {self.split} to predict on: give args.prompts, or inject "
                "dataset_module (callbridge-lf does)"
            )
        return dataset

    def on_train_end(self, run: Run) -> None:
        model = gen.generating_model(run, "prediction")
        tokenizer = gen.find_tokenizer(run, self.tokenizer, "prediction")
        examples = gen.examples_from(self._source(run), tokenizer, self.max_samples, "prediction")
        kwargs = gen.generation_kwargs(self.generating_args, tokenizer, self.max_new_tokens)
        outputs = gen.generate(model, examples, kwargs)
        rows = []
        for example, new in zip(examples, outputs, strict=True):
            row = {
                "prompt": gen.decode(tokenizer, example.prompt_ids),
                "predict": gen.decode(tokenizer, new),
            }
            if example.reference_ids is not None:
                row["label"] = gen.decode(tokenizer, example.reference_ids)
            rows.append(row)
        path = self.path(run)
        if path is None:
            logger.warning(
                "callbridge prediction: the run has no output directory; set args.filename to "
                "an absolute path to keep the predictions"
            )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
        )
        os.replace(tmp, path)
        self.written = len(rows)
        logger.info(
            "[%s] prediction: %d predictions at step %d written to %s",
            run.framework,
            len(rows),
            run.state.global_step,
            path,
        )
