"""From specs to callbacks: validate, coerce, inject, nest, construct (callbridge._build)."""

from __future__ import annotations

import collections
import logging
import traceback
from pathlib import Path
from typing import Any

import pytest

import callbridge
from callbridge import ConfigError


def one(name: str, **args: Any) -> dict[str, Any]:
    return {"custom_callbacks": [{"name": name, "args": args}]}


def build_one(name: str, **args: Any) -> Any:
    [callback] = callbridge.build(one(name, **args), strict=True)
    return callback


def problems(config: Any, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        callbridge.build(config, strict=True, **kwargs)
    return [(p.key_path, p.message) for p in info.value.problems]


# Validation happens before anything is constructed.


def test_unknown_argument_lists_the_accepted_ones_and_the_closest() -> None:
    assert problems(one("early_stopping", early_stopping_patiense=3)) == [
        (
            "custom_callbacks[0].args.early_stopping_patiense",
            "unknown argument 'early_stopping_patiense' for 'early_stopping'. Did you mean "
            "'early_stopping_patience'? "
            "Accepted: early_stopping_patience: int, early_stopping_threshold: float, metric: str, "
            "mode: one of 'min', 'max'.",
        )
    ]


def test_missing_required_argument_names_it_and_its_type() -> None:
    assert problems(one("sample_callbacks.Needs", url="http://x")) == [
        (
            "custom_callbacks[0].args",
            "missing required argument 'interval' (expected int) for 'sample_callbacks.Needs'; "
            "add it under args",
        )
    ]


def test_every_problem_of_a_spec_is_reported_and_nothing_is_constructed() -> None:
    found = problems(
        {
            "custom_callbacks": [
                {"name": "sample_callbacks.Needs", "args": {"interval": "often", "retrys": 2}},
                {"name": "sample_callbacks.Exploding"},
            ]
        }
    )
    assert [key_path for key_path, _ in found] == [
        "custom_callbacks[0].args.interval",
        "custom_callbacks[0].args.retrys",
        "custom_callbacks[0].args",
        "custom_callbacks[1]",
    ]
    assert found[0][1] == "expected int (got 'often' that is a str)"
    assert "Did you mean 'retries'?" in found[1][1]
    assert found[2][1].startswith("missing required argument 'url'")
    assert (
        found[3][1]
        == "building 'sample_callbacks.Exploding' failed: RuntimeError: cannot start with value 0"
    )


def test_uncoercible_value_says_expected_and_got_with_type() -> None:
    assert problems(one("early_stopping", early_stopping_patience="4OO")) == [
        (
            "custom_callbacks[0].args.early_stopping_patience",
            "expected int (got '4OO' that is a str)",
        )
    ]


def test_message_names_the_file_and_full_key_path(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[tool.callbacks]\ncustom_callbacks = ["log", { name = "bemaa" }, '
        '{ name = "early_stopping", args = { early_stopping_patience = "4OO" } }]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        callbridge.build(path, strict=True)
    lines = str(info.value).splitlines()
    assert lines[0] == "2 problems:"
    assert lines[1].startswith(
        f"  - {path}: tool.callbacks.custom_callbacks[1]: unknown callback 'bemaa'. "
        "Did you mean 'bema'?"
    )
    assert lines[2] == (
        f"  - {path}: tool.callbacks.custom_callbacks[2].args.early_stopping_patience: "
        "expected int (got '4OO' that is a str)"
    )


# Coercion of strings to the annotated types.


def test_strings_are_coerced_to_every_supported_annotation() -> None:
    from sample_callbacks import Color, Typed

    typed = build_one(
        "sample_callbacks.Typed",
        flag="Yes",
        count="12",
        ratio="0.25",
        label="x",
        path="out/m.jsonl",
        maybe="7",
        mode="max",
        color="green",
        tags="a, b",
        sizes=["1", "2"],
        extra={"k": "3"},
    )
    assert typed == Typed(
        flag=True,
        count=12,
        ratio=0.25,
        label="x",
        path=Path("out/m.jsonl"),
        maybe=7,
        mode="max",
        color=Color.GREEN,
        tags=["a", "b"],
        sizes=[1, 2],
        extra={"k": 3},
    )


def test_optional_accepts_none_spellings() -> None:
    assert build_one("sample_callbacks.Typed", maybe="null").maybe is None
    assert build_one("sample_callbacks.Typed", maybe=None).maybe is None


@pytest.mark.parametrize(
    ("arg", "value", "expected"),
    [
        (
            "flag",
            "sometimes",
            "expected bool (true/false, yes/no, on/off, 1/0) (got 'sometimes' that is a str)",
        ),
        ("ratio", "half", "expected float (got 'half' that is a str)"),
        ("label", 5, "expected str (got 5 that is an int)"),
        ("maybe", "seven", "expected int or None (got 'seven' that is a str)"),
        ("mode", "median", "expected one of 'min', 'max' (got 'median' that is a str)"),
        ("color", "blue", "expected one of 'RED', 'GREEN' (got 'blue' that is a str)"),
        ("sizes", ["1", "x"], "expected int (got ['1', 'x'] that is a list)"),
    ],
)
def test_values_that_do_not_coerce_are_reported_at_their_key(
    arg: str, value: Any, expected: str
) -> None:
    assert problems(one("sample_callbacks.Typed", **{arg: value})) == [
        (f"custom_callbacks[0].args.{arg}", expected)
    ]


def test_a_secret_argument_value_is_never_echoed_in_a_coercion_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CB_RETRIES_TOKEN", "tok-9d8e")
    found = problems(one("sample_callbacks.Secretive", retries="${CB_RETRIES_TOKEN}", api_key=12))
    assert found == [
        ("custom_callbacks[0].args.retries", "expected int (got a str, value hidden)"),
        ("custom_callbacks[0].args.api_key", "expected str or None (got an int, value hidden)"),
    ]


def test_a_secret_argument_value_is_never_echoed_when_the_constructor_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validators often quote the value; a secret's value is replaced in what we report."""

    class Strict(callbridge.Callback):
        def __init__(self, api_key: str) -> None:
            raise ValueError(f"api_key {api_key!r} does not start with 'sk-'")

    callbridge.register("acme.strict", Strict)
    monkeypatch.setenv("CB_STRICT_KEY", "pk-live-5e6f")
    with pytest.raises(ConfigError) as info:
        callbridge.build(one("acme.strict", api_key="${CB_STRICT_KEY}"), strict=True)
    assert str(info.value) == (
        "<mapping>: custom_callbacks[0]: building 'acme.strict' failed: ValueError: "
        "api_key '***' does not start with 'sk-'"
    )
    # Nor in the traceback a caller would print: the original exception is not chained.
    assert "pk-live-5e6f" not in "".join(traceback.format_exception(info.value))


def test_a_callback_whose_repr_shows_a_secret_is_named_without_the_value(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """callbridge cannot mask a class's own repr: it says which field to declare repr=False."""
    import attrs

    @attrs.define
    class Leaky(callbridge.Callback):
        api_key: str = ""
        logger_name: str = "x"

    @attrs.define
    class Careful(callbridge.Callback):
        api_key: str = attrs.field(default="", repr=False)

    callbridge.register("acme.leaky", Leaky)
    callbridge.register("acme.careful", Careful)
    monkeypatch.setenv("CB_LEAKY_KEY", "sk-leaky-1234")
    monkeypatch.setenv("CB_NAME_TOKEN", "tok-5678")
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        callbridge.build(
            {
                "custom_callbacks": [
                    # A secret by name, and a plain field given a secret variable's value.
                    {
                        "name": "acme.leaky",
                        "args": {"api_key": "${CB_LEAKY_KEY}", "logger_name": "${CB_NAME_TOKEN}"},
                    },
                    {"name": "acme.careful", "args": {"api_key": "${CB_LEAKY_KEY}"}},
                ]
            },
            strict=True,
        )
    warnings = [r.getMessage() for r in caplog.records if "in its repr" in r.getMessage()]
    assert warnings == [
        "callbridge: acme.leaky (<mapping>: custom_callbacks[0]) shows the value of its secret "
        "arguments 'api_key', 'logger_name' in its repr; declare them with "
        "attrs.field(repr=False) (or leave them out of __repr__)"
    ]
    assert "sk-leaky-1234" not in caplog.text
    assert "tok-5678" not in caplog.text


# Injection by parameter name.


def test_context_objects_are_injected_by_parameter_name() -> None:
    model_args, finetuning_args = object(), object()
    [smart] = callbridge.build(
        one("sample_callbacks.Smart", custom_arg="x"),
        inject={"model_args": model_args, "finetuning_args": finetuning_args, "unused": 1},
        strict=True,
    )
    assert smart.model_args is model_args
    assert smart.finetuning_args is finetuning_args
    assert smart.custom_arg == "x"


def test_config_arguments_win_over_injected_ones() -> None:
    [smart] = callbridge.build(
        one("sample_callbacks.Smart", custom_arg="x", model_args="from-config"),
        inject={"model_args": "injected", "finetuning_args": "f"},
        strict=True,
    )
    assert smart.model_args == "from-config"


def test_a_missing_injected_object_says_how_to_provide_it() -> None:
    assert problems(one("sample_callbacks.Smart", custom_arg="x"), inject={"model_args": 1}) == [
        (
            "custom_callbacks[0].args",
            "'sample_callbacks.Smart' needs 'finetuning_args', which is injected at build: attach "
            "it "
            "with an adapter (callbridge_hf.attach(trainer, ...)) or pass "
            "inject={'finetuning_args': ...}",
        )
    ]


def test_any_injected_name_fills_an_optional_parameter_too() -> None:
    """``inject`` is not limited to the adapters' names."""

    class WantsRunId(callbridge.Callback):
        def __init__(self, run_id: str = "none") -> None:
            self.run_id = run_id

    callbridge.register("acme.run_id", WantsRunId)
    [cb] = callbridge.build({"custom_callbacks": ["acme.run_id"]}, inject={"run_id": "r-42"})
    assert cb.run_id == "r-42"


# Nested callbacks as argument values.


def test_a_name_args_value_is_instantiated_recursively() -> None:
    from sample_callbacks import Scorer

    evaluator = build_one(
        "sample_callbacks.Evaluator",
        judge={"name": "sample_callbacks.Scorer", "args": {"threshold": "0.75"}},
        options={"name": "not-a-callback"},
    )
    assert evaluator.judge == Scorer(threshold=0.75)
    # options is annotated as a dict: a {name: ...} value there is data.
    assert evaluator.options == {"name": "not-a-callback"}


def test_nested_specs_are_validated_with_their_own_key_path() -> None:
    assert problems(
        one(
            "sample_callbacks.Evaluator",
            judge={"name": "sample_callbacks.Scorer", "args": {"treshold": 1}},
        )
    ) == [
        (
            "custom_callbacks[0].args.judge.args.treshold",
            "unknown argument 'treshold' for 'sample_callbacks.Scorer'. Did you mean 'threshold'? "
            "Accepted: threshold: float, api_key: str or None.",
        )
    ]


def test_nested_unknown_name_is_reported_at_the_argument() -> None:
    [(key_path, message)] = problems(one("sample_callbacks.Evaluator", judge={"name": "scorer"}))
    assert key_path == "custom_callbacks[0].args.judge"
    assert message.startswith("unknown callback 'scorer'.")


@pytest.mark.parametrize(
    ("nested_args", "message"),
    [
        ([1, 2], "expected a table of arguments (got [1, 2] that is a list)"),
        ("threshold=1", "expected a table of arguments (got 'threshold=1' that is a str)"),
    ],
)
def test_nested_args_that_are_not_a_table_are_a_config_error(
    nested_args: Any, message: str
) -> None:
    assert problems(
        one(
            "sample_callbacks.Evaluator",
            judge={"name": "sample_callbacks.Scorer", "args": nested_args},
        )
    ) == [("custom_callbacks[0].args.judge.args", message)]


def test_nested_argument_names_must_be_identifiers() -> None:
    found = problems(
        one("sample_callbacks.Evaluator", judge={"name": "sample_callbacks.Scorer", "args": {1: 2}})
    )
    assert found == [
        (
            "custom_callbacks[0].args.judge.args.1",
            "argument names must be identifiers (got 1 that is an int)",
        )
    ]


# strict = false: skip what fails, log it once, summarise.


def test_not_strict_skips_a_failing_callback_with_one_error_and_a_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {
        "custom_callbacks": [
            "log",
            {"name": "sample_callbacks.Exploding", "args": {"value": 3}},
            {"name": "early_stopping", "enabled": False},
            "sample_callbacks.Scorer",
        ]
    }
    with caplog.at_level(logging.INFO, logger="callbridge"):
        built = callbridge.build(config, strict=False)
    assert [type(cb).__name__ for cb in built] == ["LogCallback", "Scorer"]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "callbridge"]
    assert messages == [
        (
            "ERROR",
            "callbridge: skipped callback 'sample_callbacks.Exploding' at <mapping>: "
            "custom_callbacks[1]: "
            "building 'sample_callbacks.Exploding' failed: RuntimeError: cannot start with value 3",
        ),
        (
            "WARNING",
            "callbridge: 2 callbacks loaded, 1 disabled, 1 failed (<mapping>); "
            "set strict = true to stop before training instead",
        ),
    ]


def test_a_clean_build_logs_its_summary_at_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="callbridge"):
        callbridge.build({"custom_callbacks": ["log", "early_stopping"]})
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "callbridge: 2 callbacks loaded, 0 disabled, 0 failed (<mapping>)")
    ]


def test_strict_from_the_config_raises_one_error_listing_every_problem() -> None:
    config = {
        "strict": True,
        "custom_callbacks": ["logg", {"name": "early_stopping", "args": {"mode": "up"}}, "log"],
    }
    with pytest.raises(ConfigError) as info:
        callbridge.build(config)
    assert [p.key_path for p in info.value.problems] == [
        "custom_callbacks[0]",
        "custom_callbacks[1].args.mode",
    ]


def test_strict_argument_overrides_the_config() -> None:
    config = {"strict": True, "custom_callbacks": ["logg", "log"]}
    assert [type(cb).__name__ for cb in callbridge.build(config, strict=False)] == ["LogCallback"]


def test_callbacks_are_built_in_list_order_including_native_objects() -> None:
    # A registered factory is trusted as its author declared it (an import path would not be).
    callbridge.register("ordered", collections.OrderedDict)
    built = callbridge.build(
        {
            "custom_callbacks": [
                "early_stopping",
                "log",
                {"name": "ordered", "args": {"a": 1}},
            ]
        }
    )
    assert [type(cb).__name__ for cb in built] == [
        "EarlyStoppingCallback",
        "LogCallback",
        "OrderedDict",
    ]
    assert built[2] == {"a": 1}


def test_build_entries_keep_the_spec_and_a_unique_key() -> None:
    entries = callbridge.build_entries(
        {"custom_callbacks": ["log", {"name": "log", "enabled": False}, "log"]}
    )
    assert [(e.key, e.label) for e in entries] == [
        # Keys survive reordering: the name, #3 for its third entry (disabled ones count).
        ("log", "log (custom_callbacks[0])"),
        ("log#3", "log (custom_callbacks[2])"),
    ]


def test_a_required_positional_only_parameter_cannot_be_configured() -> None:
    def needs_positional(x: int, /) -> object:
        return x

    callbridge.register("acme.positional", needs_positional)
    assert problems({"custom_callbacks": ["acme.positional"]}) == [
        (
            "custom_callbacks[0]",
            "'acme.positional' has a required positional-only parameter 'x' that a config cannot "
            "set; "
            "wrap it in a factory function with keyword parameters",
        )
    ]


# check(): everything build validates, without building side effects.


def test_check_returns_every_problem_without_raising() -> None:
    found = callbridge.check(
        {"custom_callbacks": ["logg", {"name": "early_stopping", "args": {"mode": "up"}}]}
    )
    assert [p.key_path for p in found] == ["custom_callbacks[0]", "custom_callbacks[1].args.mode"]


def test_check_runs_the_validation_of_neutral_constructors() -> None:
    [problem] = callbridge.check(one("early_stopping", early_stopping_patience=0))
    assert problem.key_path == "custom_callbacks[0]"
    assert problem.message.startswith("building 'early_stopping' failed: ValueError:")


def test_check_accepts_adapter_injected_names_as_present() -> None:
    assert callbridge.check(one("sample_callbacks.Smart", custom_arg="x")) == []
    assert callbridge.check({"custom_callbacks": ["acme_missing_pkg.X"]}) != []


def test_the_skip_log_names_the_argument_at_fault(caplog: pytest.LogCaptureFixture) -> None:
    """Not strict, the log line still says which argument is wrong, not just which callback."""
    config = {
        "custom_callbacks": [
            "log",
            {"name": "early_stopping", "args": {"early_stopping_patience": "4OO"}},
        ]
    }
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        callbridge.build(config, strict=False)
    assert caplog.records[0].getMessage() == (
        "callbridge: skipped callback 'early_stopping' at <mapping>: custom_callbacks[1]: "
        "args.early_stopping_patience: expected int (got '4OO' that is a str)"
    )


def test_check_reports_structural_problems_and_goes_on_to_resolve_the_valid_entries() -> None:
    """One bad entry's shape does not hide another entry's unknown name: check reports both."""
    problems = callbridge.check({"custom_callbacks": [42, {"name": "early_stoping"}, "log"]})
    assert [(p.key_path, p.message.split(".")[0]) for p in problems] == [
        (
            "custom_callbacks[0]",
            "expected a callback name or a {name, args, enabled} table (got 42 that is an int)",
        ),
        ("custom_callbacks[1]", "unknown callback 'early_stoping'"),
    ]


def test_another_frameworks_short_argument_name_gets_a_suggestion() -> None:
    """Lightning's 'patience' points to early_stopping_patience."""
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build(
            {"custom_callbacks": [{"name": "early_stopping", "args": {"patience": 2}}]}, strict=True
        )
    assert "Did you mean 'early_stopping_patience'?" in str(info.value)
