"""Errors a person can act on (callbridge._errors): one sentence naming the file and the key path,
for every malformed input we could think of, and never anything but a CallbridgeError."""

from __future__ import annotations

import contextlib
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import callbridge
from callbridge import CallbridgeError, ConfigError, Problem
from callbridge._errors import closest, describe, did_you_mean, is_secret_name

from .helpers import FIXTURES

MALFORMED = FIXTURES / "malformed"
UNSET = "CALLBRIDGE_TEST_UNSET_VAR"

# file -> (key path, a fragment of the message that is the point of the error).
# An empty key path: a problem of the whole file; syntax errors then name the line.
CASES: dict[str, tuple[str, str]] = {
    "toml_syntax.toml": ("", "invalid TOML: Unclosed inline table (at line 4, column 29)"),
    "yaml_syntax.yaml": ("", "invalid YAML at line 5, column 1: while parsing a flow mapping"),
    # The column and wording of json's message vary by Python version (3.13 names the comma).
    "json_syntax.json": ("", "invalid JSON at line 1, column "),
    "python_tag.yaml": (
        "",
        "YAML at line 3, column 5: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
    "duplicate_keys.yaml": (
        "",
        "at line 3, column 1: while reading a mapping, found the key 'custom_callbacks' twice",
    ),
    "unhashable_key.yaml": (
        "",
        "invalid YAML at line 2, column 3: while constructing a mapping, found unhashable key",
    ),
    "empty.yaml": ("", "file is empty; expected a callbacks configuration"),
    "empty.toml": ("", "file is empty; expected a callbacks configuration"),
    "comment_only.yaml": ("", "file holds no data (only comments?)"),
    "not_utf8.yaml": ("", "is not UTF-8 text"),
    "setup.cfg": (
        "",
        "unsupported file type '.cfg': expected pyproject.toml, another .toml, .yaml, "
        ".yml or .json",
    ),
    "directory.yaml": ("", "is a directory; name the file"),
    "nonexistent.yaml": ("", "file not found (looked for "),
    "top_level_list.yaml": (
        "",
        "expected a mapping at the top level (got ['log', 'early_stopping'] that is a list)",
    ),
    "no_callbacks.yaml": ("", "no callbacks declared: expected a 'custom_callbacks' list"),
    "pyproject_without_table/pyproject.toml": (
        "tool.callbacks",
        "no [tool.callbacks] table; add one",
    ),
    "pyproject_unknown_key/pyproject.toml": (
        "tool.callbacks.custom_callbacks_onyl",
        "Did you mean 'custom_callbacks_only'?",
    ),
    "near_miss_training.yaml": ("custom_callbacks_onyl", "Did you mean 'custom_callbacks_only'?"),
    "section_not_table.toml": ("tool.callbacks", "expected a table at tool.callbacks"),
    "custom_callbacks_not_list.toml": (
        "tool.callbacks.custom_callbacks",
        "expected a list of callback names or {name, args} tables (got 'log' that is a str)",
    ),
    "custom_callbacks_mapping.yaml": ("custom_callbacks", "expected a list of callback names"),
    "entry_int.yaml": ("custom_callbacks[1]", "(got 42 that is an int)"),
    "entry_list.toml": (
        "custom_callbacks[0]",
        "expected a callback name or a {name, args, enabled} table",
    ),
    "name_not_str.toml": (
        "tool.callbacks.custom_callbacks[0].name",
        "expected a str (got 3 that is an int)",
    ),
    "name_missing.yaml": ("custom_callbacks[0]", "missing 'name'"),
    "args_not_table.yaml": ("custom_callbacks[0].args", "expected a table of arguments"),
    "arg_name_not_identifier.toml": (
        "tool.callbacks.custom_callbacks[0].args.logger-name",
        "argument names must be identifiers",
    ),
    "enabled_not_boolish.yaml": (
        "custom_callbacks[0].enabled",
        "expected bool (true/false, yes/no, on/off, 1/0) (got 'sometimes' that is a str)",
    ),
    "enabled_in_args_not_boolish.toml": (
        "tool.callbacks.custom_callbacks[0].args.enabled",
        "(got 'perhaps' that is a str)",
    ),
    "enabled_twice.yaml": ("custom_callbacks[0].args.enabled", "'enabled' is given twice"),
    "entry_unknown_key.yaml": ("custom_callbacks[0].arguments", "Did you mean 'args'?"),
    "strict_not_bool.toml": ("tool.callbacks.strict", "(got 'sometimes' that is a str)"),
    "callback_errors_bad.yaml": ("callback_errors", "expected one of 'log', 'disable', 'raise'"),
    "max_failures_zero.toml": (
        "callback_max_failures",
        "expected an int >= 1 (got 0 that is an int)",
    ),
    "unknown_name.yaml": (
        "custom_callbacks[0]",
        "unknown callback 'logg'. Did you mean 'log'? Available: ",
    ),
    "unknown_import_path.toml": (
        "tool.callbacks.custom_callbacks[1]",
        "no module named 'acme_missing_pkg'",
    ),
    "broken_plugin.yaml": (
        "custom_callbacks[0]",
        "importing 'broken_plugin' failed: ImportError: simulated",
    ),
    "nested_unknown.yaml": ("custom_callbacks[0].args.judge", "unknown callback 'scorer'"),
    "nested_args_list.yaml": (
        "custom_callbacks[0].args.judge.args",
        "expected a table of arguments (got [0.5] that is a list)",
    ),
    "unknown_arg.toml": (
        "tool.callbacks.custom_callbacks[0].args.early_stoping_patience",
        "Did you mean 'early_stopping_patience'? Accepted: early_stopping_patience: int",
    ),
    "missing_arg.yaml": (
        "custom_callbacks[0].args",
        "missing required argument 'upload_url' (expected str)",
    ),
    "uncoercible_int.toml": (
        "tool.callbacks.custom_callbacks[1].args.early_stopping_patience",
        "expected int (got '4OO' that is a str)",
    ),
    "uncoercible_literal.yaml": (
        "custom_callbacks[0].args.mode",
        "expected one of 'min', 'max' (got 'maximum' that is a str)",
    ),
    "uncoercible_bool.yaml": ("custom_callbacks[0].args.debug", "(got 'verbose' that is a str)"),
    "uncoercible_path.yaml": (
        "custom_callbacks[0].args.jsonl",
        "expected Path or None (got 12 that is an int)",
    ),
    "constructor_rejects.yaml": (
        "custom_callbacks[0]",
        "building 'early_stopping' failed: ValueError: 'early_stopping_patience' must be >= 1: 0",
    ),
    "missing_env.yaml": (
        "custom_callbacks[0].args.metric",
        f"environment variable '{UNSET}' is not set",
    ),
    "malformed_interpolation.yaml": ("custom_callbacks[0].args.metric", "malformed '${eval loss}'"),
    "unclosed_interpolation.toml": (
        "tool.callbacks.custom_callbacks[0].args.metric",
        "unclosed '${'",
    ),
}


def test_the_corpus_is_large_and_every_file_has_an_expectation() -> None:
    on_disk = {
        p.relative_to(MALFORMED).as_posix()
        for p in MALFORMED.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(MALFORMED).parts)
    } | {"directory.yaml"}
    assert on_disk == set(CASES) - {"nonexistent.yaml"}
    assert len(on_disk) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_is_a_config_error_naming_file_and_key_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    key_path, fragment = CASES[name]
    path = MALFORMED / name
    with pytest.raises(ConfigError) as info:
        callbridge.build(path, strict=True)
    [problem] = info.value.problems
    assert (problem.source, problem.key_path) == (str(path), key_path)
    assert fragment in problem.message
    prefix = f"{path}: {key_path}: " if key_path else f"{path}: "
    assert str(info.value) == prefix + problem.message


@pytest.mark.parametrize("name", sorted(CASES))
def test_callbridge_check_exits_1_with_a_sentence_and_no_traceback(
    name: str, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    key_path, fragment = CASES[name]
    path = MALFORMED / name
    proc = cli("check", str(path), unset=(UNSET,))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    assert f"{path}: 1 problem\n" in proc.stdout
    where = f"{path}: {key_path}: " if key_path else f"{path}: "
    assert where in proc.stdout
    assert fragment in proc.stdout


def problem_keys(stdout: str) -> list[str]:
    return [line.split(": ")[1] for line in stdout.splitlines()[1:]]


def test_check_reports_every_problem_of_a_file_not_just_the_first(
    tmp_path: Path, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    structure = tmp_path / "structure.toml"
    structure.write_text(
        'strict = "sometimes"\n'
        'custom_callbacks = [{ name = 3 }, "log", { name = "log", enabled = "perhaps" }, 7]\n',
        encoding="utf-8",
    )
    arguments = tmp_path / "arguments.yaml"
    arguments.write_text(
        "custom_callbacks:\n"
        "  - logg\n"
        "  - name: early_stopping\n    args: {early_stopping_patience: 4OO, mode: up}\n"
        "  - name: sample_callbacks.Needs\n",
        encoding="utf-8",
    )
    proc = cli("check", str(structure), str(arguments))
    assert proc.returncode == 1
    first, rest = proc.stdout.split(f"{arguments}: ", 1)
    second = f"{arguments}: {rest}"
    assert first.splitlines()[0] == f"{structure}: 4 problems"
    assert problem_keys(first) == [
        "strict",
        "custom_callbacks[0].name",
        "custom_callbacks[2].enabled",
        "custom_callbacks[3]",
    ]
    assert second.splitlines()[0] == f"{arguments}: 5 problems"
    assert problem_keys(second) == [
        "custom_callbacks[0]",
        "custom_callbacks[1].args.early_stopping_patience",
        "custom_callbacks[1].args.mode",
        "custom_callbacks[2].args",
        "custom_callbacks[2].args",
    ]


# The error classes themselves.


def test_problem_reads_as_file_key_path_message() -> None:
    assert str(Problem("pyproject.toml", "tool.callbacks.strict", "expected bool")) == (
        "pyproject.toml: tool.callbacks.strict: expected bool"
    )
    assert str(Problem("c.yaml", "", "file is empty")) == "c.yaml: file is empty"


def test_config_error_lists_several_problems_one_per_line() -> None:
    error = ConfigError([Problem("a.yaml", "x", "bad"), Problem("a.yaml", "", "worse")])
    assert str(error) == "2 problems:\n  - a.yaml: x: bad\n  - a.yaml: worse"
    assert (error.source, error.key_path, error.message) == ("a.yaml", "x", "bad")


def test_config_error_is_a_callbridge_error_and_a_value_error() -> None:
    assert issubclass(ConfigError, CallbridgeError)
    assert issubclass(ConfigError, ValueError)


def test_config_error_survives_pickling_with_its_problems() -> None:
    error = ConfigError.at("c.yaml", "custom_callbacks[0]", "unknown callback 'x'")
    clone = pickle.loads(pickle.dumps(error))
    assert (type(clone), clone.problems, str(clone)) == (ConfigError, error.problems, str(error))


def test_config_error_needs_a_problem() -> None:
    with pytest.raises(ValueError, match="needs at least one problem"):
        ConfigError([])


@pytest.mark.parametrize(
    ("value", "secret", "text"),
    [
        ("4OO", False, "'4OO' that is a str"),
        (3, False, "3 that is an int"),
        ([1], False, "[1] that is a list"),
        ("sk-live-1", True, "a str, value hidden"),
        (12, True, "an int, value hidden"),
        ("x" * 100, False, repr("x" * 100)[:77] + "... that is a str"),
    ],
)
def test_describe_says_value_and_type_unless_secret(value: Any, secret: bool, text: str) -> None:
    assert describe(value, secret=secret) == text


def test_did_you_mean_offers_the_closest_then_the_list() -> None:
    assert did_you_mean("bemaa", ["log", "bema", "early_stopping"]) == (
        "Did you mean 'bema'? Available: bema, early_stopping, log."
    )
    assert did_you_mean("zzz", []) == "Available: (none)."
    assert closest("upload_intervl", ["upload_interval", "url"]) == "upload_interval"
    assert closest("zzz", ["upload_interval", "url"]) is None


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("ACME_TOKEN", True),
        ("db_password", True),
        ("AUTH_HEADER", True),
        ("client_secret", True),
        ("upload_url", False),
        ("stage", False),
        ("metric", False),
        ("HF_TOKEN", True),
        ("apiKey", True),
        ("APIKey", True),
        ("secret_value", True),
        ("x-api-key", True),
        # Names that only contain a secret word name measurements and places, not secrets.
        ("key_path", False),
        ("tokens_per_second", False),
        ("num_tokens", False),
        ("mean_token_accuracy", False),
        ("tokens_per_step", False),
        ("private_key_file", False),
        # The shell's working directories, though PWD ends like a password.
        ("PWD", False),
        ("OLDPWD", False),
        ("DB_PWD", True),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


# Property: whatever the data, load and build raise nothing but CallbridgeError.

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
)
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
#: Names to try: real ones, near misses, and harmless import paths (never arbitrary modules).
names = st.sampled_from(
    [
        "log",
        "early_stopping",
        "logg",
        "",
        " ",
        "sample_callbacks.Typed",
        "sample_callbacks:Evaluator",
        "sample_callbacks.Scorer",
        "sample_callbacks.Needs",
        "sample_callbacks.Exploding",
        "sample_callbacks.make_recorder",
        "sample_callbacks.Kwargs",
        "sample_callbacks.Secretive",
        "my_company.callbacks.AlertCallback",
        "broken_plugin.Thing",
        "acme_missing_pkg.X",
        "${CB_NAME}",
        "${CB_NAME:-log}",
        "${",
        "a..b",
        ":x",
        "x:",
    ]
)
#: Callbacks and their parameter names: random arguments then reach coercion and nesting.
KNOWN: dict[str, list[str]] = {
    "log": ["level", "jsonl", "logger_name"],
    "early_stopping": ["early_stopping_patience", "early_stopping_threshold", "metric", "mode"],
    "sample_callbacks.Typed": [
        "flag",
        "count",
        "ratio",
        "label",
        "path",
        "maybe",
        "mode",
        "color",
        "tags",
        "sizes",
        "extra",
    ],
    "sample_callbacks.Evaluator": ["judge", "options"],
    "sample_callbacks.Scorer": ["threshold", "api_key"],
    "sample_callbacks.Needs": ["url", "interval", "retries"],
    "sample_callbacks.Secretive": ["endpoint", "api_key", "token", "password", "hidden", "retries"],
    "sample_callbacks.Smart": ["model_args", "finetuning_args", "custom_arg"],
    "sample_callbacks.Kwargs": ["anything", "model"],
}
strings = st.sampled_from(
    [
        "${CB_X}",
        "${CB_X:-1}",
        "$${",
        "${",
        "${1}",
        "true",
        "off",
        "4OO",
        "1e999",
        "none",
        "max",
        "green",
        "a, b",
        "sk-secret",
        "\u00b2",
        "\u0664",
        "1_000",
        " 7 ",
    ]
) | st.text(max_size=10)


def known_entry(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``{name, args, enabled}`` for a known callback, its args drawn from its parameter names."""
    return st.one_of(
        *[
            st.fixed_dictionaries(
                {"name": st.just(name)},
                optional={
                    "args": st.dictionaries(
                        st.sampled_from([*params, "enabled", "bad-name"]) | st.text(max_size=5),
                        children,
                        max_size=4,
                    )
                    | children,
                    "enabled": children,
                },
            )
            for name, params in KNOWN.items()
        ]
    )


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | strings,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=6), children, max_size=3)
        | known_entry(children)
        | st.fixed_dictionaries({"name": names}, optional={"args": children, "enabled": children})
    ),
    max_leaves=12,
)
entries = (
    names
    | known_entry(values)
    | values
    | st.fixed_dictionaries(
        {"name": names | values}, optional={"args": values, "enabled": values, "arg": values}
    )
)
sections = st.fixed_dictionaries(
    {},
    optional={
        "custom_callbacks": st.lists(entries, max_size=4) | values,
        "custom_callbacks_only": values,
        "strict": values,
        "callback_errors": st.sampled_from(["log", "disable", "raise"]) | values,
        "callback_max_failures": st.integers() | values,
        "custom_callbacks_onyl": values,
        "model_name_or_path": values,
    },
)
documents = (
    sections | st.builds(lambda s: {"tool": {"callbacks": s}}, sections | values) | json_like
)
#: Sections whose structure is valid, so that every random argument value reaches build.
well_formed = st.fixed_dictionaries(
    {
        "custom_callbacks": st.lists(
            st.one_of(
                *[
                    st.fixed_dictionaries(
                        {
                            "name": st.just(name),
                            "args": st.dictionaries(st.sampled_from(params), values, max_size=4),
                        }
                    )
                    for name, params in KNOWN.items()
                ]
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={"callback_max_failures": strings, "strict": st.booleans()},
)

PROPERTY = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def only_callbridge_errors(data: Any, strict: bool) -> None:
    with contextlib.suppress(CallbridgeError):
        callbridge.load(data)
    with contextlib.suppress(CallbridgeError):
        callbridge.build(data, strict=strict)
    callbridge.check(data)  # returns problems, never raises


@PROPERTY
@given(data=json_like)
def test_arbitrary_nested_data_raises_only_callbridge_errors(data: Any) -> None:
    only_callbridge_errors(data, strict=True)


@PROPERTY
@given(data=documents, strict=st.booleans())
def test_schema_shaped_data_with_random_values_raises_only_callbridge_errors(
    data: Any, strict: bool
) -> None:
    only_callbridge_errors(data, strict=strict)


@PROPERTY
@given(data=well_formed, strict=st.booleans())
def test_random_argument_values_raise_only_callbridge_errors(data: Any, strict: bool) -> None:
    only_callbridge_errors(data, strict=strict)


@PROPERTY
@given(text=st.text(max_size=200), suffix=st.sampled_from([".yaml", ".toml", ".json"]))
def test_arbitrary_file_text_raises_only_callbridge_errors(
    text: str, suffix: str, tmp_path: Path
) -> None:
    path = tmp_path / f"any{suffix}"
    path.write_text(text, encoding="utf-8")
    only_callbridge_errors(path, strict=True)
