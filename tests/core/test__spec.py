"""The configuration model and its validation (callbridge._spec)."""

from __future__ import annotations

from typing import Any

import pytest

import callbridge
from callbridge import CallbacksConfig, CallbackSpec, ConfigError
from callbridge._spec import OPTION_KEYS, mask, parse_section

from .test__coerce import FALSE_WORDS, TRUE_WORDS


def parse(
    data: Any, *, loose: bool = True, prefix: str = "", env: dict[str, str] | None = None
) -> CallbacksConfig:
    return parse_section(data, source="cfg.yaml", prefix=prefix, environ=env or {}, loose=loose)


def problems_of(data: Any, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse(data, **kwargs)
    return [(p.key_path, p.message) for p in info.value.problems]


def test_a_bare_name_is_a_spec_with_no_args() -> None:
    config = parse({"custom_callbacks": ["log"]})
    assert config.callbacks == [CallbackSpec("log", {}, True)]


def test_a_table_entry_keeps_its_args_as_written() -> None:
    """Arguments stay raw at load: ``${VAR}`` is resolved at build, never earlier."""
    config = parse({"custom_callbacks": [{"name": "x.Y", "args": {"url": "${URL}", "n": 3}}]})
    assert config.callbacks == [CallbackSpec("x.Y", {"url": "${URL}", "n": 3}, True)]


def test_options_have_documented_defaults() -> None:
    config = parse({"custom_callbacks": []})
    assert (
        config.custom_callbacks_only,
        config.strict,
        config.callback_errors,
        config.callback_max_failures,
    ) == (False, False, "log", 3)


def test_options_are_read() -> None:
    config = parse(
        {
            "custom_callbacks_only": "true",
            "strict": True,
            "callback_errors": "disable",
            "callback_max_failures": "5",
            "custom_callbacks": ["log"],
        }
    )
    assert (
        config.custom_callbacks_only,
        config.strict,
        config.callback_errors,
        config.callback_max_failures,
    ) == (True, True, "disable", 5)


def test_specs_remember_their_file_and_key_path_without_affecting_equality() -> None:
    config = parse(
        {"custom_callbacks": ["log", {"name": "early_stopping"}]},
        prefix="tool.callbacks",
        loose=False,
    )
    assert [(s.source, s.key_path) for s in config.callbacks] == [
        ("cfg.yaml", "tool.callbacks.custom_callbacks[0]"),
        ("cfg.yaml", "tool.callbacks.custom_callbacks[1]"),
    ]
    assert config.callbacks[0] == CallbackSpec("log", source="elsewhere.toml", key_path="x")
    assert config.callbacks[1].label == "early_stopping (custom_callbacks[1])"


@pytest.mark.parametrize("word", TRUE_WORDS + FALSE_WORDS)
def test_entry_level_enabled_accepts_string_booleans(word: str) -> None:
    config = parse({"custom_callbacks": [{"name": "log", "enabled": word}]})
    assert config.callbacks[0].enabled is (word in TRUE_WORDS)


@pytest.mark.parametrize("word", TRUE_WORDS + FALSE_WORDS)
def test_enabled_inside_args_accepts_string_booleans(word: str) -> None:
    """The LLaMA-Factory spelling: ``args: {enabled: ...}``; it is not passed to the callback."""
    config = parse(
        {"custom_callbacks": [{"name": "log", "args": {"enabled": word, "level": "debug"}}]}
    )
    assert config.callbacks[0] == CallbackSpec("log", {"level": "debug"}, word in TRUE_WORDS)


def test_enabled_from_a_variable_with_a_default() -> None:
    entry = {
        "name": "callbacks.company.production_monitor",
        "args": {"enabled": "${PRODUCTION_MODE:-false}"},
    }
    assert parse({"custom_callbacks": [entry]}).callbacks[0].enabled is False
    assert (
        parse({"custom_callbacks": [entry]}, env={"PRODUCTION_MODE": "TRUE"}).callbacks[0].enabled
        is True
    )


def test_disabled_entries_are_kept_but_not_enabled() -> None:
    config = parse({"custom_callbacks": ["log", {"name": "early_stopping", "enabled": False}]})
    assert [s.name for s in config.callbacks] == ["log", "early_stopping"]
    assert [s.name for s in config.enabled] == ["log"]


def test_enabled_given_twice_is_an_error() -> None:
    assert problems_of(
        {"custom_callbacks": [{"name": "log", "enabled": True, "args": {"enabled": False}}]}
    ) == [
        (
            "custom_callbacks[0].args.enabled",
            "'enabled' is given twice (in the entry and in its args); keep one",
        )
    ]


@pytest.mark.parametrize(
    ("entry", "key_path", "message"),
    [
        (
            {"name": "log", "enabled": "maybe"},
            "custom_callbacks[0].enabled",
            "expected bool (true/false, yes/no, on/off, 1/0) (got 'maybe' that is a str)",
        ),
        (
            {"name": "log", "args": {"enabled": 2}},
            "custom_callbacks[0].args.enabled",
            "expected bool (true/false, yes/no, on/off, 1/0) (got 2 that is an int)",
        ),
        (
            {"name": 3},
            "custom_callbacks[0].name",
            "expected a str (got 3 that is an int)",
        ),
        (
            {"name": "  "},
            "custom_callbacks[0].name",
            "expected a callback name (got an empty string)",
        ),
        (
            {"args": {}},
            "custom_callbacks[0]",
            "missing 'name': every entry names its callback",
        ),
        (
            {"name": "log", "args": ["level", "debug"]},
            "custom_callbacks[0].args",
            "expected a table of arguments (got ['level', 'debug'] that is a list)",
        ),
        (
            {"name": "log", "arg": {"level": "debug"}},
            "custom_callbacks[0].arg",
            "unknown key 'arg'. Did you mean 'args'? An entry has: name, args, enabled "
            "(callback arguments go under args).",
        ),
        (
            {"name": "log", "args": {"bad-name": 1}},
            "custom_callbacks[0].args.bad-name",
            "argument names must be identifiers (got 'bad-name' that is a str)",
        ),
        (
            7,
            "custom_callbacks[0]",
            "expected a callback name or a {name, args, enabled} table (got 7 that is an int)",
        ),
        ("", "custom_callbacks[0]", "expected a callback name (got an empty string)"),
    ],
)
def test_entry_problems_name_the_key_path_and_what_was_expected(
    entry: Any, key_path: str, message: str
) -> None:
    assert problems_of({"custom_callbacks": [entry]}) == [(key_path, message)]


def test_custom_callbacks_must_be_a_list() -> None:
    [(key_path, message)] = problems_of(
        {"custom_callbacks": "log"}, prefix="tool.callbacks", loose=False
    )
    assert key_path == "tool.callbacks.custom_callbacks"
    assert message.startswith(
        "expected a list of callback names or {name, args} tables (got 'log' that is a str)."
    )
    assert 'In TOML: custom_callbacks = ["log"]; in YAML: custom_callbacks: [log]' in message


@pytest.mark.parametrize(
    ("options", "key_path", "message"),
    [
        (
            {"strict": "sometimes"},
            "strict",
            "expected bool (true/false, yes/no, on/off, 1/0) (got 'sometimes' that is a str)",
        ),
        (
            {"custom_callbacks_only": [True]},
            "custom_callbacks_only",
            "expected bool (true/false, yes/no, on/off, 1/0) (got [True] that is a list)",
        ),
        (
            {"callback_errors": "ignore"},
            "callback_errors",
            "expected one of 'log', 'disable', 'raise' (got 'ignore' that is a str)",
        ),
        (
            {"callback_max_failures": 0},
            "callback_max_failures",
            "expected an int >= 1 (got 0 that is an int)",
        ),
        (
            {"callback_max_failures": True},
            "callback_max_failures",
            "expected an int >= 1 (got True that is a bool)",
        ),
    ],
)
def test_option_problems_name_the_option(
    options: dict[str, Any], key_path: str, message: str
) -> None:
    assert problems_of({"custom_callbacks": [], **options}) == [(key_path, message)]


def test_every_problem_of_a_section_is_reported_together() -> None:
    found = problems_of(
        {
            "strict": "perhaps",
            "custom_callbacks": [{"name": 1}, "log", {"name": "x", "enabled": "?"}],
        }
    )
    assert [key_path for key_path, _ in found] == [
        "strict",
        "custom_callbacks[0].name",
        "custom_callbacks[2].enabled",
    ]


def test_unknown_key_in_a_strict_section_lists_the_known_keys() -> None:
    [(key_path, message)] = problems_of(
        {"custom_callbacks": [], "callbacks_errors": "log"}, prefix="tool.callbacks", loose=False
    )
    assert key_path == "tool.callbacks.callbacks_errors"
    assert message == (
        "unknown key 'callbacks_errors'. Did you mean 'callback_errors'? Known keys: "
        + ", ".join(OPTION_KEYS)
        + "."
    )
    assert {
        "custom_callbacks",
        "custom_callbacks_only",
        "strict",
        "callback_errors",
        "callback_max_failures",
    } <= set(OPTION_KEYS)


def test_a_loose_section_ignores_other_tools_keys_but_not_near_misses_under_strict() -> None:
    data = {
        "model_name_or_path": "m",
        "stage": "sft",
        "strict": True,
        "custom_callbacks_onyl": True,
        "custom_callbacks": [],
    }
    [(key_path, message)] = problems_of(data, loose=True)
    assert key_path == "custom_callbacks_onyl"
    assert message.startswith(
        "unknown key 'custom_callbacks_onyl'. Did you mean 'custom_callbacks_only'?"
    )


def test_a_section_that_is_not_a_table_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse(["log"], prefix="tool.callbacks")
    assert str(info.value) == (
        "cfg.yaml: tool.callbacks: expected a table at tool.callbacks (got ['log'] that is a list)"
    )


def test_mask_hides_secret_keys_and_secret_paths_at_any_depth() -> None:
    args = {"api_key": "k", "url": "u", "nested": {"password": "p", "x": ["a", "b"]}, "token": None}
    assert mask(args, {"nested.x[1]"}) == {
        "api_key": "***",
        "url": "u",
        "nested": {"password": "***", "x": ["a", "***"]},
        "token": None,
    }


def test_the_repr_of_a_spec_masks_secret_arguments() -> None:
    spec = CallbackSpec("acme.Upload", {"api_key": "sk-live-123", "interval": 5})
    assert "sk-live-123" not in repr(spec)
    assert (
        repr(spec) == "CallbackSpec(name='acme.Upload', args={'api_key': '***', 'interval': 5}, "
        "enabled=True, id=None)"
    )


def test_configs_compare_by_content_not_by_origin() -> None:
    a = callbridge.load({"custom_callbacks": ["log"], "strict": True})
    b = CallbacksConfig(
        [CallbackSpec("log")], strict=True, source="other.toml", key_prefix="tool.callbacks"
    )
    assert a == b
    assert a != CallbacksConfig([CallbackSpec("log")], strict=False)


def test_a_bad_value_read_from_a_secret_variable_is_never_echoed() -> None:
    env = {"DEPLOY_TOKEN": "tok-8c1f", "ERRORS_SECRET": "sec-77ab", "MAX_AUTH": "auth-5d2e"}
    found = problems_of(
        {
            "callback_errors": "${ERRORS_SECRET}",
            "callback_max_failures": "${MAX_AUTH}",
            "custom_callbacks": [{"name": "log", "enabled": "${DEPLOY_TOKEN}"}],
        },
        env=env,
    )
    assert found == [
        ("callback_errors", "expected one of 'log', 'disable', 'raise' (got a str, value hidden)"),
        ("callback_max_failures", "expected an int >= 1 (got a str, value hidden)"),
        (
            "custom_callbacks[0].enabled",
            "expected bool (true/false, yes/no, on/off, 1/0) (got a str, value hidden)",
        ),
    ]


@pytest.mark.parametrize(("text", "expected"), [("4", 4), (" 12 ", 12), ("\u0664", 4)])
def test_max_failures_reads_decimal_strings(text: str, expected: int) -> None:
    assert (
        parse({"custom_callbacks": [], "callback_max_failures": text}).callback_max_failures
        == expected
    )


@pytest.mark.parametrize("text", ["\u00b2", "1.5", "-1", "three"])
def test_max_failures_rejects_other_strings_with_a_config_error(text: str) -> None:
    [(key_path, message)] = problems_of({"custom_callbacks": [], "callback_max_failures": text})
    assert key_path == "callback_max_failures"
    assert message == f"expected an int >= 1 (got {text!r} that is a str)"
