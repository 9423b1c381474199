"""``${VAR}``, ``${VAR:-default}`` and ``$${`` in config strings (callbridge._interpolate)."""

from __future__ import annotations

import logging

import pytest

import callbridge
from callbridge._interpolate import InterpolationError, interpolate, interpolate_tree


def test_variable_is_replaced_by_its_value() -> None:
    assert interpolate("${HOST}:8080", {"HOST": "example.org"}) == (
        "example.org:8080",
        frozenset({"HOST"}),
    )


def test_default_is_used_when_the_variable_is_unset() -> None:
    assert interpolate("${URL:-http://127.0.0.1:8080}", {})[0] == "http://127.0.0.1:8080"


def test_default_is_used_when_the_variable_is_empty() -> None:
    """``:-`` as in the shell: an empty value counts as unset."""
    assert interpolate("${MODE:-dev}", {"MODE": ""})[0] == "dev"


def test_a_set_variable_wins_over_its_default() -> None:
    assert interpolate("${MODE:-dev}", {"MODE": "prod"})[0] == "prod"


def test_empty_default_is_allowed() -> None:
    assert interpolate("a${X:-}b", {})[0] == "ab"


def test_several_variables_in_one_string() -> None:
    text, used = interpolate("${A}-${B:-b}-${C}", {"A": "1", "C": "3"})
    assert (text, used) == ("1-b-3", frozenset({"A", "B", "C"}))


def test_double_dollar_escapes_a_literal_placeholder() -> None:
    """``$${`` writes a literal ``${``: the variable is not read."""
    assert interpolate("cost: $${PRICE}", {"PRICE": "9"}) == ("cost: ${PRICE}", frozenset())


def test_a_lone_dollar_is_left_alone() -> None:
    assert interpolate("$5 and $HOME", {"HOME": "/root"})[0] == "$5 and $HOME"


def test_missing_required_variable_names_it_and_suggests_a_default() -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate("${API_KEY}", {})
    assert str(info.value) == (
        "environment variable 'API_KEY' is not set; set it, or give a default with "
        "${API_KEY:-default}"
    )


def test_unclosed_placeholder_is_an_error_that_shows_the_escape() -> None:
    with pytest.raises(InterpolationError, match=r"unclosed '\$\{'.*write '\$\$\{'"):
        interpolate("prefix ${NAME", {"NAME": "x"})


@pytest.mark.parametrize("text", ["${}", "${1ABC}", "${A-B}", "${ NAME}", "${A:default}"])
def test_malformed_placeholder_is_an_error(text: str) -> None:
    with pytest.raises(InterpolationError, match=r"malformed '\$\{.*expected \$\{VAR\} or"):
        interpolate(text, {})


def test_tree_interpolates_every_string_at_any_depth() -> None:
    tree = {"a": "${X}", "b": ["${Y:-y}", {"c": "x=${X}"}], "n": 3, "none": None}
    value, problems, secret_paths = interpolate_tree(
        tree, {"X": "1"}, source="f.yaml", key_path="args"
    )
    assert value == {"a": "1", "b": ["y", {"c": "x=1"}], "n": 3, "none": None}
    assert problems == []
    assert secret_paths == set()


def test_tree_reports_one_problem_per_bad_string_with_its_key_path() -> None:
    tree = {"ok": "${SET}", "deep": [{"bad": "${MISSING_ONE}"}], "other": "${MISSING_TWO}"}
    _, problems, _ = interpolate_tree(tree, {"SET": "s"}, source="f.yaml", key_path="root")
    assert [(p.source, p.key_path) for p in problems] == [
        ("f.yaml", "root.deep[0].bad"),
        ("f.yaml", "root.other"),
    ]
    assert "'MISSING_ONE'" in problems[0].message
    assert "'MISSING_TWO'" in problems[1].message


def test_tree_marks_paths_read_from_secret_looking_variables() -> None:
    tree = {
        "url": "https://h/?t=${UPLOAD_TOKEN}",
        "name": "${RUN_NAME}",
        "list": ["${DB_PASSWORD}"],
    }
    env = {"UPLOAD_TOKEN": "t", "RUN_NAME": "r", "DB_PASSWORD": "p"}
    _, _, secret_paths = interpolate_tree(tree, env, source="f", key_path="args")
    assert secret_paths == {"args.url", "args.list[0]"}


# End to end: callbridge.build interpolates arguments the same way.


def test_build_interpolates_nested_argument_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_TAG", "alpha")
    monkeypatch.delenv("CB_UNSET", raising=False)
    [typed] = callbridge.build(
        {
            "custom_callbacks": [
                {
                    "name": "sample_callbacks.Typed",
                    "args": {
                        "label": "run-${CB_TAG}",
                        "tags": ["${CB_TAG}", "${CB_UNSET:-beta}", "$${CB_TAG}"],
                        "extra": {"${CB_TAG}": "${CB_UNSET:-7}"},
                    },
                }
            ]
        },
        strict=True,
    )
    assert typed.label == "run-alpha"
    assert typed.tags == ["alpha", "beta", "${CB_TAG}"]
    # Keys are data, not interpolated; values are, then coerced to the annotated int.
    assert typed.extra == {"${CB_TAG}": 7}


def test_interpolated_strings_are_coerced_to_the_annotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CB_PATIENCE", "5")
    monkeypatch.setenv("CB_DEBUG", "On")
    [es, typed] = callbridge.build(
        {
            "custom_callbacks": [
                {"name": "early_stopping", "args": {"early_stopping_patience": "${CB_PATIENCE}"}},
                {"name": "sample_callbacks.Typed", "args": {"flag": "${CB_DEBUG}"}},
            ]
        },
        strict=True,
    )
    assert es.early_stopping_patience == 5
    assert typed.flag is True


def test_missing_variable_error_names_variable_and_key_path_but_no_value(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The error says which variable, where; it never prints a value (not even another secret's)."""
    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("CB_API_KEY", secret)
    monkeypatch.delenv("CB_UPLOAD_URL", raising=False)
    config = {
        "custom_callbacks": [
            {
                "name": "callbacks.company.upload_monitor_to_new_platform",
                "args": {"api_key": "${CB_API_KEY}", "upload_url": "${CB_UPLOAD_URL}"},
            }
        ]
    }
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build(config, strict=True)
    assert str(info.value) == (
        "<mapping>: custom_callbacks[0].args.upload_url: environment variable 'CB_UPLOAD_URL' "
        "is not set; set it, or give a default with ${CB_UPLOAD_URL:-default}"
    )
    # Not strict: the same sentence is logged, still without the value.
    with caplog.at_level(logging.ERROR, logger="callbridge"):
        assert callbridge.build(config, strict=False) == []
    assert "'CB_UPLOAD_URL'" in caplog.text
    assert secret not in caplog.text


def test_every_missing_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CB_MISSING_A", "CB_MISSING_B"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build(
            {
                "custom_callbacks": [
                    {"name": "sample_callbacks.Typed", "args": {"label": "${CB_MISSING_A}"}},
                    {"name": "sample_callbacks.Typed", "args": {"tags": ["x", "${CB_MISSING_B}"]}},
                ]
            },
            strict=True,
        )
    assert [p.key_path for p in info.value.problems] == [
        "custom_callbacks[0].args.label",
        "custom_callbacks[1].args.tags[1]",
    ]


def test_entry_names_and_options_are_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_CALLBACK", "early_stopping")
    monkeypatch.setenv("CB_STRICT", "yes")
    config = callbridge.load(
        {
            "strict": "${CB_STRICT}",
            "custom_callbacks": ["${CB_CALLBACK}", {"name": "${CB_NAME:-log}"}],
        }
    )
    assert config.strict is True
    assert [spec.name for spec in config.callbacks] == ["early_stopping", "log"]


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "callbacks.company.monitor", "enabled": False, "args": {"api_key": "${CB_NOPE}"}},
        {"name": "callbacks.company.monitor", "args": {"enabled": "off", "api_key": "${CB_NOPE}"}},
        {"name": "${CB_NOPE_NAME}", "enabled": "no"},
    ],
    ids=["entry-level", "in-args", "name"],
)
def test_disabled_callbacks_never_need_their_variables(
    entry: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CB_NOPE", raising=False)
    monkeypatch.delenv("CB_NOPE_NAME", raising=False)
    config = {"custom_callbacks": ["log", entry]}
    assert callbridge.check(config) == []
    built = callbridge.build(config, strict=True)
    assert [type(cb).__name__ for cb in built] == ["LogCallback"]


def test_environ_argument_overrides_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CB_ON", "false")
    config = callbridge.load(
        {"custom_callbacks": [{"name": "log", "enabled": "${CB_ON}"}]}, environ={"CB_ON": "true"}
    )
    assert config.callbacks[0].enabled is True


def test_a_missing_variable_in_a_typed_argument_is_one_problem_not_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The raw ``${VAR}`` text is not also reported as a bad int."""
    monkeypatch.delenv("CB_PATIENCE", raising=False)
    config = {
        "custom_callbacks": [
            {"name": "early_stopping", "args": {"early_stopping_patience": "${CB_PATIENCE}"}}
        ]
    }
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build(config, strict=True)
    assert [p.key_path for p in info.value.problems] == [
        "custom_callbacks[0].args.early_stopping_patience"
    ]
    assert "'CB_PATIENCE' is not set" in str(info.value)
