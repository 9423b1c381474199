"""One training YAML, two readers: LLaMA-Factory gets its keys, callbridge gets its own.

The file is read once, the way ``llamafactory-cli train`` reads it (OmegaConf, with
``key=value`` overrides merged on top), then split: callbridge's keys
(``custom_callbacks``, ``custom_callbacks_only``, ``strict``, ``callback_errors``...)
become a :class:`callbridge.CallbacksConfig`, every other key goes to LLaMA-Factory
untouched. A key that is neither LLaMA-Factory's nor callbridge's is reported with the
closest name of either, before anything is loaded: LLaMA-Factory's own parser would
refuse it too, but only after the model and the data were read.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from callbridge import CallbacksConfig, ConfigError, Problem
from callbridge._errors import closest
from callbridge._spec import OPTION_KEYS, parse_section

#: callbridge's keys in a training YAML.
CALLBRIDGE_KEYS: frozenset[str] = frozenset(OPTION_KEYS)

#: What this integration injects into callbacks, besides the HF adapter's ``trainer``,
#: ``model``, ``args`` and ``processing_class``.
LF_CONTEXT: tuple[str, ...] = (
    "model_args",
    "data_args",
    "training_args",
    "finetuning_args",
    "generating_args",
    "tokenizer",
    "dataset_module",
)

_SUFFIXES = (".yaml", ".yml", ".json")


class LFConfig:
    """A training configuration split between LLaMA-Factory and callbridge.

    Attributes:
        source: the file as the user named it, or ``<mapping>``.
        lf_args: what LLaMA-Factory receives (every key but callbridge's).
        callbacks: callbridge's part, validated as a section of ``source``.
    """

    __slots__ = ("callbacks", "lf_args", "source")

    def __init__(self, source: str, lf_args: dict[str, Any], callbacks: CallbacksConfig) -> None:
        self.source = source
        self.lf_args = lf_args
        self.callbacks = callbacks

    def __repr__(self) -> str:
        return (
            f"LFConfig(source={self.source!r}, lf_keys={sorted(self.lf_args)!r}, "
            f"callbacks={len(self.callbacks.callbacks)})"
        )


def read(
    args: str | os.PathLike[str] | Mapping[str, Any] | Sequence[str] | None = None,
    overrides: Iterable[str] = (),
) -> LFConfig:
    """Read a training configuration and split it (nothing is validated against LLaMA-Factory yet).

    Args:
        args: a YAML or JSON file, a mapping of its keys, a list ``[file, "key=value", ...]``
            as on the command line, or None for ``sys.argv[1:]`` (as LLaMA-Factory does).
        overrides: ``key=value`` strings merged over the file (OmegaConf's dot-list syntax,
            as ``llamafactory-cli train file.yaml key=value``).

    Raises:
        callbridge.ConfigError: the file cannot be read, or callbridge's keys are malformed.
    """
    if args is None:
        args = sys.argv[1:]
    extra = list(overrides)
    if isinstance(args, Mapping):
        source, data = "<mapping>", dict(args)
    elif isinstance(args, (str, os.PathLike)):
        source, data = os.fspath(args), _load_file(os.fspath(args))
    else:
        items = [str(a) for a in args]
        if not items or not items[0].endswith(_SUFFIXES):
            raise ConfigError.at(
                "<command line>",
                "",
                "expected a training YAML (or JSON) file first, then key=value overrides "
                f"(got {' '.join(items) or 'nothing'})",
            )
        source, data = items[0], _load_file(items[0])
        extra = items[1:] + extra
    if extra:
        data = _merge(data, extra, source)
    ours = {k: v for k, v in data.items() if k in CALLBRIDGE_KEYS}
    theirs = {k: v for k, v in data.items() if k not in CALLBRIDGE_KEYS}
    callbacks = parse_section(ours, source=source, prefix="", environ=os.environ, loose=False)
    return LFConfig(source, theirs, callbacks)


def _load_file(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = Path(name)
    if not path.is_file():
        raise ConfigError.at(name, "", f"file not found (looked for {path.absolute()})")
    if path.suffix not in _SUFFIXES:
        raise ConfigError.at(name, "", "expected a .yaml, .yml or .json training file")
    try:
        # As LLaMA-Factory's read_args: OmegaConf, no interpolation resolved (callbridge's
        # ${VAR} and ${VAR:-default} stay text until its build reads the environment).
        loaded = OmegaConf.to_container(OmegaConf.load(path.absolute()))
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one sentence with the file
        raise ConfigError.at(name, "", f"cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError.at(name, "", "expected a mapping of training keys at the top level")
    return {str(k): v for k, v in loaded.items()}


def _merge(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_cli(overrides))
        out = OmegaConf.to_container(merged)
    except Exception as exc:  # noqa: BLE001 - a malformed override becomes one sentence
        raise ConfigError.at(
            "<command line>",
            "",
            f"cannot apply the overrides {' '.join(overrides)} to {source}: {exc}",
        ) from None
    assert isinstance(out, dict)  # merged over a mapping
    return {str(k): v for k, v in out.items()}


@functools.cache
def lf_keys() -> frozenset[str]:
    """Every key LLaMA-Factory's training parser accepts (its five argument dataclasses)."""
    import dataclasses

    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    classes = (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments)
    return frozenset(
        f.name for cls in (*classes, GeneratingArguments) for f in dataclasses.fields(cls)
    )


def unknown_keys(config: LFConfig) -> list[Problem]:
    """Keys that are neither LLaMA-Factory's nor callbridge's, each with the closest of either."""
    known = lf_keys()
    problems = []
    for key in config.lf_args:
        if key in known:
            continue
        near = closest(key, sorted(known | CALLBRIDGE_KEYS))
        hint = f"Did you mean {near!r}? " if near else ""
        problems.append(
            Problem(
                config.source,
                key,
                f"unknown key {key!r}: neither a LLaMA-Factory argument nor a callbridge key. "
                f"{hint}LLaMA-Factory's arguments are listed by `llamafactory-cli train -h`; "
                f"callbridge's are {', '.join(sorted(CALLBRIDGE_KEYS))}",
            )
        )
    return problems


def lf_problems(config: LFConfig) -> list[Problem]:
    """What LLaMA-Factory's own argument checks refuse (unknown keys first, without parsing)."""
    problems = unknown_keys(config)
    if problems:
        return problems
    from llamafactory.hparams import get_train_args

    try:
        get_train_args(dict(config.lf_args))
    except (ValueError, TypeError) as exc:
        problems.append(Problem(config.source, "", f"LLaMA-Factory refuses the arguments: {exc}"))
    return problems


def callback_problems(config: LFConfig) -> list[Problem]:
    """Every problem of callbridge's part, as ``callbridge check`` finds them."""
    import callbridge

    return list(callbridge.check(config.callbacks, inject_names=LF_CONTEXT))
