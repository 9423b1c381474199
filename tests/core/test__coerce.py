"""Strings from YAML and the environment become the annotated type (callbridge._coerce)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pytest

from callbridge._coerce import CoercionError, coerce, is_mapping_type, to_bool, type_name


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


TRUE_WORDS = ["true", "True", "TRUE", "1", "yes", "Yes", "YES", "on", "On", "ON", " true "]
FALSE_WORDS = ["false", "False", "FALSE", "0", "no", "No", "NO", "off", "Off", "OFF"]


@pytest.mark.parametrize("word", TRUE_WORDS)
def test_true_words_in_any_case_are_true(word: str) -> None:
    assert to_bool(word) is True


@pytest.mark.parametrize("word", FALSE_WORDS)
def test_false_words_in_any_case_are_false(word: str) -> None:
    assert to_bool(word) is False


@pytest.mark.parametrize("value", [True, False, 0, 1])
def test_real_booleans_and_0_1_are_booleans(value: int) -> None:
    assert to_bool(value) is bool(value)


@pytest.mark.parametrize("value", ["maybe", "", "2", "y", "t", 2, -1, 1.0, None, [True]])
def test_anything_else_is_not_a_boolean(value: object) -> None:
    with pytest.raises(CoercionError) as info:
        to_bool(value)
    assert info.value.expected == "bool (true/false, yes/no, on/off, 1/0)"


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("42", int, 42),
        (" 42 ", int, 42),
        (42, int, 42),
        (3.0, int, 3),
        ("0.5", float, 0.5),
        ("1e-3", float, 0.001),
        (2, float, 2.0),
        ("text", str, "text"),
        ("runs/a.jsonl", Path, Path("runs/a.jsonl")),
        ("7", Optional[int], 7),  # noqa: UP045 - the spelling users write
        ("7", int | None, 7),
        ("none", int | None, None),
        ("null", int | None, None),
        (None, int | None, None),
        ("max", Literal["min", "max"], "max"),
        ("3", Literal[1, 3], 3),
        ("yes", Literal[True], True),
        ("high", Level, Level.HIGH),
        ("HIGH", Level, Level.HIGH),
        (2, Level, Level.HIGH),
        ("a, b ,c", list[str], ["a", "b", "c"]),
        ("", list[str], []),
        (["1", 2], list[int], [1, 2]),
        (("1", "2"), tuple[int, ...], (1, 2)),
        (["1", "x"], tuple[int, str], (1, "x")),
        (["1", "1"], set[int], {1}),
        ("1,2", Sequence[int], [1, 2]),
        ({"a": "1"}, dict[str, int], {"a": 1}),
        ({"a": "1"}, Mapping[str, float], {"a": 1.0}),
        ("5", Annotated[int, "doc"], 5),
        ({"x": 1}, Any, {"x": 1}),
        ("anything", "UnresolvedForwardRef", "anything"),
    ],
)
def test_values_are_coerced_to_the_annotation(value: object, tp: Any, expected: object) -> None:
    result = coerce(value, tp)
    assert result == expected
    assert type(result) is type(expected)


def test_a_member_of_a_union_is_kept_as_is() -> None:
    """``int | str`` keeps the string '5' a string: no surprise conversions."""
    assert coerce("5", int | str) == "5"
    assert coerce(5, int | str) == 5


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("4OO", int, "int"),
        (True, int, "int"),
        (2.5, int, "int"),
        ("fast", float, "float"),
        (True, float, "float"),
        (5, str, "str"),
        (5, Path, "path (a string)"),
        ("x", int | None, "int or None"),
        ("median", Literal["min", "max"], "one of 'min', 'max'"),
        ("medium", Level, "one of 'LOW', 'HIGH'"),
        (["1", "x"], list[int], "int"),
        (["1"], tuple[int, int], "tuple[int, int]"),
        (5, list[int], "list[int]"),
        ("a=1", dict[str, int], "dict[str, int]"),
        ("value", type(None), "None"),
    ],
)
def test_values_that_do_not_fit_name_the_expected_type(
    value: object, tp: Any, expected: str
) -> None:
    with pytest.raises(CoercionError) as info:
        coerce(value, tp)
    assert info.value.expected == expected


def test_huge_integers_do_not_fit_a_float() -> None:
    """An int too large for a float is a coercion error, not an OverflowError."""
    with pytest.raises(CoercionError):
        coerce(10**400, float)


def test_instances_of_a_class_annotation_pass_others_do_not() -> None:
    class Judge:
        pass

    judge = Judge()
    assert coerce(judge, Judge) is judge
    with pytest.raises(CoercionError) as info:
        coerce("judge", Judge)
    assert info.value.expected == "Judge"


@pytest.mark.parametrize(
    ("tp", "name"),
    [
        (int, "int"),
        (int | None, "int or None"),
        (Optional[str], "str or None"),  # noqa: UP045 - the spelling users write
        (Literal["min", "max"], "one of 'min', 'max'"),
        (list[int], "list[int]"),
        (dict[str, float], "dict[str, float]"),
        (Level, "one of 'LOW', 'HIGH'"),
        (Path | None, "Path or None"),
    ],
)
def test_type_names_read_as_words(tp: Any, name: str) -> None:
    assert type_name(tp) == name


@pytest.mark.parametrize(
    ("tp", "expected"),
    [
        (dict[str, int], True),
        (Mapping[str, Any], True),
        (dict | None, True),
        (list[int], False),
        (Any, False),
        (str, False),
    ],
)
def test_mapping_annotations_are_recognised(tp: Any, expected: bool) -> None:
    """A ``{name: ...}`` value for a dict-typed argument is data, not a nested callback."""
    assert is_mapping_type(tp) is expected
