"""Without an annotation, a string argument is read as the type of the parameter's default.

The reference document's ``debug: "${DEBUG_MODE:-false}"`` reaches a constructor written
``def __init__(self, api_key, debug=False)`` (no annotations, as the document teaches for
native callbacks): it must arrive as ``False``, not as the truthy string ``'false'``.
"""

from __future__ import annotations

from typing import Any

import pytest

import callbridge
from callbridge._coerce import CoercionError, coerce_untyped, effective_type
from callbridge.testing import use_registry


class Untyped(callbridge.Callback):
    """A plain class whose parameters have defaults but no annotations."""

    def __init__(
        self, api_key=None, debug=False, upload_interval=50, ratio=0.5, name="x", extra=None
    ):  # type: ignore[no-untyped-def]  # the untyped signature is the point
        self.api_key = api_key
        self.debug = debug
        self.upload_interval = upload_interval
        self.ratio = ratio
        self.name = name
        self.extra = extra


class Unresolvable(callbridge.Callback):
    """An annotation naming a type that cannot be resolved (imported under TYPE_CHECKING)."""

    def __init__(self, debug: NotImportedHere = False) -> None:  # type: ignore[name-defined]  # noqa: F821
        self.debug = debug


@pytest.mark.parametrize(
    ("default", "expected"),
    [(False, bool), (1.5, float), (50, int | float), (None, Any), ("s", Any), ([], Any)],
)
def test_the_type_of_a_plain_default_stands_in_for_a_missing_annotation(
    default: object, expected: object
) -> None:
    assert effective_type(Any, default) == expected


def test_an_annotation_wins_over_the_default() -> None:
    assert effective_type(str, False) is str
    assert coerce_untyped("false", str, False) == "false"


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("false", False, False),
        ("TRUE", False, True),
        ("50", 7, 50),
        ("0.25", 7, 0.25),  # an int default also takes a float
        ("2", 0.5, 2.0),
        (0.5, 7, 0.5),  # a typed YAML value is left as written
        ("anything", None, "anything"),  # no default type to go by
    ],
)
def test_strings_are_read_as_the_default_type(
    value: object, default: object, expected: object
) -> None:
    got = coerce_untyped(value, Any, default)
    assert (got, type(got)) == (expected, type(expected))


def test_a_string_the_default_type_cannot_read_is_refused() -> None:
    with pytest.raises(CoercionError) as info:
        coerce_untyped("maybe", Any, False)
    assert info.value.expected.startswith("bool")


def test_build_coerces_environment_strings_for_an_untyped_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DEBUG_MODE", raising=False)
    monkeypatch.setenv("INTERVAL", "25")
    config = {
        "custom_callbacks": [
            {
                "name": "untyped",
                "args": {
                    "api_key": "k",
                    "debug": "${DEBUG_MODE:-false}",
                    "upload_interval": "${INTERVAL}",
                    "ratio": "0.75",
                    "name": "${UNSET_NAME:-12}",
                },
            }
        ]
    }
    with use_registry() as registry:
        registry.register("untyped", Untyped)
        [cb] = callbridge.build(config, strict=True)
    assert (cb.debug, cb.upload_interval, cb.ratio, cb.name) == (False, 25, 0.75, "12")
    monkeypatch.setenv("DEBUG_MODE", "on")
    with use_registry() as registry:
        registry.register("untyped", Untyped)
        [cb] = callbridge.build(config, strict=True)
    assert cb.debug is True


def test_an_unresolvable_annotation_also_falls_back_to_the_default() -> None:
    with use_registry() as registry:
        registry.register("unresolvable", Unresolvable)
        [cb] = callbridge.build(
            {"custom_callbacks": [{"name": "unresolvable", "args": {"debug": "false"}}]},
            strict=True,
        )
    assert cb.debug is False


def test_check_reports_a_value_the_default_type_cannot_read() -> None:
    config = {
        "custom_callbacks": [
            {"name": "untyped", "args": {"debug": "maybe", "upload_interval": "fifty"}}
        ]
    }
    with use_registry() as registry:
        registry.register("untyped", Untyped)
        problems = callbridge.check(config)
    assert [(p.key_path, p.message) for p in problems] == [
        (
            "custom_callbacks[0].args.debug",
            "expected bool (true/false, yes/no, on/off, 1/0) (got 'maybe' that is a str)",
        ),
        (
            "custom_callbacks[0].args.upload_interval",
            "expected int or float (got 'fifty' that is a str)",
        ),
    ]
