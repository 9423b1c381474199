"""``evaluation``: at each evaluation, generate completions and log them with the metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import attrs

from .._protocol import Callback, Run
from . import _generation as gen
from ._paths import in_output_dir

logger = logging.getLogger("callbridge.evaluation")


def _positive(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 (got {value})")


@attrs.define
class EvaluationCallback(Callback):
    """Generate completions at every evaluation, score them, and log them with its metrics.

    After each evaluation of the trainer (``on_evaluate``), the model completes
    ``num_samples`` prompts with the run's generation settings (LLaMA-Factory's
    ``generating_args``, injected under ``callbridge-lf``, or ``generating_args`` given
    as a mapping), and the evaluation's metrics gain ``eval_gen_tokens`` (mean new
    tokens) and, where the prompts come with reference answers, ``eval_gen_exact_match``
    (the share of completions equal to their reference). Callbacks after this one in
    the list see them (``log``, ``reporter``, ``monitor``). Each evaluation is written
    as one JSON object (``step``, ``metrics``, ``samples``: prompt, generated,
    reference) to ``filename`` in the output directory, and a line is logged.

    The prompts are ``prompts`` if given, else the first examples of the trainer's
    evaluation dataset (HF; supervised rows whose ``labels`` mask the prompt with
    -100, as LLaMA-Factory prepares them). Under Lightning give ``prompts`` and keep
    the Hugging Face model as the LightningModule's ``model`` attribute; a run whose
    model cannot generate fails at train begin with a message saying so.

    Args:
        generating_args: generation settings: LLaMA-Factory's ``GeneratingArguments``
            (injected) or a mapping of ``generate`` keyword arguments.
        prompts: the prompts to complete (default: from the evaluation dataset).
        num_samples: how many prompts per evaluation.
        max_new_tokens: overrides the settings' length (default: theirs, else 32).
        filename: the JSON lines file; a relative path is taken in the output directory.
        tokenizer: the tokenizer (injected; default: the trainer's or the module's).
    """

    rank_zero_only: ClassVar[bool] = True

    generating_args: Any = attrs.field(default=None, repr=False)
    prompts: list[str] | None = None
    num_samples: int = attrs.field(default=4, validator=_positive)
    max_new_tokens: int | None = attrs.field(default=None, validator=_positive)
    filename: str = "generations.jsonl"
    tokenizer: Any = attrs.field(default=None, repr=False)

    evaluations: int = attrs.field(default=0, init=False)

    def path(self, run: Run) -> Path | None:
        """Where the JSON lines go for this run, if anywhere."""
        return in_output_dir(run, self.filename)

    def on_train_begin(self, run: Run) -> None:
        # Fail at the start, with the reason, rather than at the first evaluation.
        gen.generating_model(run, "evaluation")
        gen.find_tokenizer(run, self.tokenizer, "evaluation")

    def _examples(self, run: Run, tokenizer: Any) -> list[gen.Example]:
        if self.prompts is not None:
            return gen.examples_from(self.prompts, tokenizer, self.num_samples, "evaluation")
        trainer = run.native.get("trainer")
        dataset = getattr(trainer, "eval_dataset", None)
        if isinstance(dataset, dict):  # several evaluation sets: the first one
            dataset = next(iter(dataset.values()), None)
        if dataset is None:
            raise gen.GenerationUnavailable(
                "evaluation: no prompts: give args.prompts, or evaluate on a dataset "
                "(the trainer's eval_dataset)"
            )
        return gen.examples_from(dataset, tokenizer, self.num_samples, "evaluation")

    def on_evaluate(self, run: Run, metrics: dict[str, float]) -> None:
        model = gen.generating_model(run, "evaluation")
        tokenizer = gen.find_tokenizer(run, self.tokenizer, "evaluation")
        examples = self._examples(run, tokenizer)
        kwargs = gen.generation_kwargs(self.generating_args, tokenizer, self.max_new_tokens)
        outputs = gen.generate(model, examples, kwargs)
        samples = []
        matches = 0
        scored = 0
        for example, new in zip(examples, outputs, strict=True):
            sample = {
                "prompt": gen.decode(tokenizer, example.prompt_ids),
                "generated": gen.decode(tokenizer, new),
            }
            if example.reference_ids is not None:
                sample["reference"] = gen.decode(tokenizer, example.reference_ids)
                scored += 1
                matches += sample["generated"] == sample["reference"]
            samples.append(sample)
        if outputs:
            metrics.setdefault("eval_gen_tokens", sum(map(len, outputs)) / len(outputs))
        if scored:
            metrics.setdefault("eval_gen_exact_match", matches / scored)
        self.evaluations += 1
        record = {"step": run.state.global_step, "metrics": dict(metrics), "samples": samples}
        path = self.path(run)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
        first = samples[0] if samples else {"prompt": "", "generated": ""}
        logger.info(
            "[%s] evaluation at step %d: %s; e.g. %r -> %r",
            run.framework,
            run.state.global_step,
            " ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
            ),
            first["prompt"],
            first["generated"],
        )
