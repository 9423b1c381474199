"""Text generation for ``evaluation`` and ``prediction``: the model, the tokenizer, the prompts.

What both need and the neutral protocol does not carry is found where each framework
keeps it, or injected: the model that generates (``run.model``, or its ``model``
attribute under Lightning), the tokenizer (``tokenizer`` / ``processing_class``
injected, the HF trainer's ``processing_class``, or the LightningModule's
``tokenizer``), the generation settings (LLaMA-Factory's ``generating_args`` or a
mapping) and the prompts (given, or the supervised examples of a dataset whose
``labels`` mask the prompt with -100, as LLaMA-Factory and TRL prepare them).
torch is imported when generating, never at import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import CallbridgeError
from .._protocol import Run

IGNORE_INDEX = -100


class GenerationUnavailable(CallbridgeError, RuntimeError):
    """The run has no model that can generate, or no tokenizer to feed it."""


def generating_model(run: Run, who: str) -> Any:
    """The model to call ``generate`` on.

    Raises:
        GenerationUnavailable: neither ``run.model`` nor its ``model`` attribute generates.
    """
    model = run.model
    for candidate in (model, getattr(model, "model", None)):
        if callable(getattr(candidate, "generate", None)):
            return candidate
    kind = "None" if model is None else f"{type(model).__module__}.{type(model).__qualname__}"
    raise GenerationUnavailable(
        f"{who} needs a model that can generate text (one with a generate() method, such as "
        f"a transformers causal LM); this run's model is {kind}, which cannot. Under Lightning "
        f"keep the Hugging Face model as the LightningModule's `model` attribute, or remove "
        f"{who!r} from the configuration"
    )


def find_tokenizer(run: Run, given: Any, who: str) -> Any:
    """The tokenizer: the one given (injected), else the trainer's or the module's.

    Raises:
        GenerationUnavailable: none found.
    """
    if given is not None:
        return given
    trainer = run.native.get("trainer")
    for owner, attr in ((trainer, "processing_class"), (trainer, "tokenizer")):
        found = getattr(owner, attr, None) if owner is not None else None
        if found is not None:
            return getattr(found, "tokenizer", found)  # a processor wraps its tokenizer
    for owner in (run.model, run.native.get("pl_module")):
        found = getattr(owner, "tokenizer", None)
        if found is not None:
            return found
    raise GenerationUnavailable(
        f"{who} needs a tokenizer: pass the trainer a processing_class (HF), give the "
        "LightningModule a `tokenizer` attribute, or inject one as inject={'tokenizer': ...}"
    )


def generation_kwargs(
    generating_args: Any, tokenizer: Any, max_new_tokens: int | None
) -> dict[str, Any]:
    """Keyword arguments for ``generate``: the settings given, then the overrides, then the ids.

    Args:
        generating_args: LLaMA-Factory's ``GeneratingArguments`` (its ``to_dict``, only the
            keys a ``GenerationConfig`` knows), a mapping, or None.
        tokenizer: gives ``pad_token_id`` and ``eos_token_id`` where the settings do not.
        max_new_tokens: overrides the settings' length.
    """
    if generating_args is None:
        settings: dict[str, Any] = {}
    elif isinstance(generating_args, Mapping):
        settings = dict(generating_args)
    elif callable(getattr(generating_args, "to_dict", None)):
        try:
            settings = dict(generating_args.to_dict(obey_generation_config=True))
        except TypeError:  # a to_dict without LLaMA-Factory's keyword
            settings = dict(generating_args.to_dict())
    else:
        raise TypeError(
            "generating_args: expected a mapping or an object with to_dict() "
            f"(got {type(generating_args).__name__})"
        )
    if max_new_tokens is not None:
        settings["max_new_tokens"] = max_new_tokens
        settings.pop("max_length", None)
    elif "max_new_tokens" not in settings and "max_length" not in settings:
        settings["max_new_tokens"] = 32
    if (
        settings.get("pad_token_id") is None
        and getattr(tokenizer, "pad_token_id", None) is not None
    ):
        settings["pad_token_id"] = tokenizer.pad_token_id
    if (
        settings.get("eos_token_id") is None
        and getattr(tokenizer, "eos_token_id", None) is not None
    ):
        settings["eos_token_id"] = tokenizer.eos_token_id
    return settings


class Example:
    """One prompt to complete, with its reference answer when the data has one."""

    __slots__ = ("prompt_ids", "reference_ids")

    def __init__(self, prompt_ids: list[int], reference_ids: list[int] | None) -> None:
        self.prompt_ids = prompt_ids
        self.reference_ids = reference_ids


def examples_from(source: Any, tokenizer: Any, limit: int | None, who: str) -> list[Example]:
    """Prompts from a list of strings or a dataset of supervised examples.

    A row with ``input_ids`` and ``labels``: the prompt is ``input_ids`` up to the first
    label that is not -100 and the reference is the labelled rest; a row with only
    ``input_ids`` is a prompt; a row with ``prompt`` or ``text`` (a string) is tokenised.

    Raises:
        GenerationUnavailable: a row of a shape none of those.
    """
    out: list[Example] = []
    rows: Sequence[Any] | Any = source
    count = len(rows) if hasattr(rows, "__len__") else None
    stop = count if limit is None else (limit if count is None else min(limit, count))
    index = 0
    while stop is None or index < stop:
        try:
            row = rows[index]
        except IndexError:
            break
        index += 1
        if isinstance(row, str):
            out.append(Example(list(tokenizer(row)["input_ids"]), None))
            continue
        if not isinstance(row, Mapping):
            raise GenerationUnavailable(
                f"{who}: cannot read a prompt from a {type(row).__name__} row; expected a "
                "string, or a mapping with input_ids (and labels), prompt or text"
            )
        if "input_ids" in row:
            ids = [int(i) for i in _as_list(row["input_ids"])]
            labels = row.get("labels")
            if labels is None:
                out.append(Example(ids, None))
                continue
            labels = [int(i) for i in _as_list(labels)]
            start = next((i for i, v in enumerate(labels) if v != IGNORE_INDEX), len(labels))
            reference = [v for v in labels[start:] if v != IGNORE_INDEX]
            out.append(Example(ids[:start], reference))
            continue
        text = row.get("prompt", row.get("text"))
        if isinstance(text, str):
            out.append(Example(list(tokenizer(text)["input_ids"]), None))
            continue
        raise GenerationUnavailable(
            f"{who}: a dataset row has none of input_ids, prompt or text (keys: "
            f"{', '.join(map(str, row))})"
        )
    return out


def _as_list(value: Any) -> list[Any]:
    tolist = getattr(value, "tolist", None)
    return list(tolist() if callable(tolist) else value)


def generate(model: Any, examples: Sequence[Example], kwargs: Mapping[str, Any]) -> list[list[int]]:
    """The new tokens of each completion (one example at a time: no padding to get wrong)."""
    import torch

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        device = torch.device("cpu")
    out: list[list[int]] = []
    try:
        with torch.no_grad():
            for example in examples:
                ids = torch.tensor([example.prompt_ids], dtype=torch.long, device=device)
                generated = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs
                )
                out.append([int(t) for t in generated[0, ids.shape[1] :].tolist()])
    finally:
        if was_training:
            model.train()
    return out


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text without special tokens (end of sequence, padding)."""
    text: str = tokenizer.decode(list(ids), skip_special_tokens=True)
    return text.strip()
