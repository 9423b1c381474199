"""Reading callbacks from pyproject.toml, any TOML, YAML, JSON or a mapping
(callbridge._sources)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import callbridge
from callbridge import CallbacksConfig, CallbackSpec, ConfigError
from callbridge._spec import OPTION_KEYS

from .helpers import FIXTURES

SPELLINGS = FIXTURES / "spellings"

#: What every file in fixtures/spellings/ declares, written out once.
EXPECTED = CallbacksConfig(
    [
        CallbackSpec("log"),
        CallbackSpec(
            "early_stopping",
            {"early_stopping_patience": 3, "metric": "eval_accuracy", "mode": "max"},
        ),
        CallbackSpec("my_company.callbacks.AlertCallback", {"alert_threshold": 0.5}, enabled=False),
        CallbackSpec(
            "sample_callbacks.Evaluator",
            {
                "judge": {"name": "sample_callbacks.Scorer", "args": {"threshold": 0.25}},
                "options": {"rounds": 2},
            },
        ),
        CallbackSpec(
            "callbacks.company.upload_monitor_to_new_platform",
            {
                "upload_url": "${MONITOR_URL:-http://127.0.0.1:8080}",
                "api_key": "${ACME_KEY:-none}",
                "upload_interval": 10,
            },
        ),
    ],
    custom_callbacks_only=True,
    strict=True,
    callback_errors="disable",
    callback_max_failures=2,
)


def test_inline_toml_array_of_tables_and_yaml_are_one_schema() -> None:
    """The three documented spellings of one config load to equal objects."""
    inline = callbridge.load(SPELLINGS / "inline.toml")
    tables = callbridge.load(SPELLINGS / "tables.toml")
    yaml = callbridge.load(SPELLINGS / "training.yaml")
    assert inline == tables
    assert tables == yaml
    assert yaml == EXPECTED


@pytest.mark.parametrize(
    "name",
    [
        "inline.toml",
        "tables.toml",
        "training.yaml",
        "top_level.toml",
        "config.json",
        "pyproject/pyproject.toml",
    ],
)
def test_every_spelling_loads_the_documented_config(name: str) -> None:
    assert callbridge.load(SPELLINGS / name) == EXPECTED


@pytest.mark.parametrize(
    "name",
    ["inline.toml", "tables.toml", "training.yaml", "top_level.toml", "pyproject/pyproject.toml"],
)
def test_every_spelling_builds_the_same_callbacks(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("MONITOR_URL", "ACME_KEY", "UPLOAD_ON"):
        monkeypatch.delenv(var, raising=False)
    built = callbridge.build(SPELLINGS / name)
    assert [type(cb).__name__ for cb in built] == [
        "LogCallback",
        "EarlyStoppingCallback",
        "Evaluator",
        "UploadMonitor",
    ]
    evaluator, monitor = built[2], built[3]
    assert evaluator.judge.threshold == 0.25
    assert (monitor.upload_url, monitor.upload_interval) == ("http://127.0.0.1:8080", 10)


def test_key_paths_follow_the_section_they_were_read_from() -> None:
    pyproject = callbridge.load(SPELLINGS / "pyproject/pyproject.toml")
    training = callbridge.load(SPELLINGS / "training.yaml")
    assert pyproject.callbacks[1].key_path == "tool.callbacks.custom_callbacks[1]"
    assert training.callbacks[1].key_path == "custom_callbacks[1]"
    assert pyproject.source == os.fspath(SPELLINGS / "pyproject/pyproject.toml")


def test_pyproject_reads_only_the_tool_callbacks_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.callbacks]\ncustom_callbacks = ["log"]\n', encoding="utf-8"
    )
    config = callbridge.load(tmp_path / "pyproject.toml")
    assert config == CallbacksConfig([CallbackSpec("log")])
    assert config.key_prefix == "tool.callbacks"


def test_pyproject_without_the_table_says_how_to_add_it(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\ncustom_callbacks = ["log"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert str(info.value) == (
        f"{path}: tool.callbacks: no [tool.callbacks] table; add one, e.g.\n"
        "    [tool.callbacks]\n"
        '    custom_callbacks = ["log"]'
    )


def test_pyproject_section_is_strict_about_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.callbacks]\ncustom_callbacks = []\nstrictt = true\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert info.value.key_path == "tool.callbacks.strictt"
    assert "Did you mean 'strict'?" in info.value.message


def test_a_file_with_tool_callbacks_and_top_level_keys_is_an_error_naming_both(
    tmp_path: Path,
) -> None:
    """One source of callbacks per file: two that would compete are refused, none wins."""
    path = tmp_path / "train.toml"
    path.write_text(
        'custom_callbacks = ["early_stopping"]\n\n[tool.callbacks]\ncustom_callbacks = ["log"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert str(info.value) == (
        f"{path}: custom_callbacks: callbacks are declared twice: in [tool.callbacks] and at the "
        "top level ('custom_callbacks'); only one would be used, so keep one of them"
    )


def test_a_toml_without_callbacks_keys_says_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('lr = 0.1\ncustom_callback = ["log"]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert str(info.value) == (
        f"{path}: no callbacks declared: expected a 'custom_callbacks' list (or a [tool.callbacks] "
        "table). Did you mean 'custom_callbacks'? Found keys: lr, custom_callback."
    )


def test_training_yaml_keys_of_other_tools_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text(
        "model_name_or_path: m\nstage: sft\ncutoff_len: 2048\ncallbacks: none\ncustom_callbacks: "
        "[log]\n",
        encoding="utf-8",
    )
    assert callbridge.load(path) == CallbacksConfig([CallbackSpec("log")])


def test_training_yaml_near_miss_of_our_key_is_an_error_under_strict(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text(
        "stage: sft\nstrict: true\ncustom_callbacks_onyl: true\ncustom_callbacks:\n  - log\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert str(info.value) == (
        f"{path}: custom_callbacks_onyl: unknown key 'custom_callbacks_onyl'. Did you mean "
        f"'custom_callbacks_only'? Known keys: {', '.join(OPTION_KEYS)}."
    )
    assert {"custom_callbacks", "custom_callbacks_only", "strict"} <= set(OPTION_KEYS)


@pytest.mark.parametrize(
    ("key", "near"),
    [
        ("callbacks", "custom_callbacks"),
        ("CUSTOM_CALLBACKS", "custom_callbacks"),
        ("custom_callback", "custom_callbacks"),
        ("Custom-Callbacks-Only", "custom_callbacks_only"),
        ("custom_callbacks_onyl", "custom_callbacks_only"),
    ],
)
def test_training_yaml_near_miss_is_a_warning_without_strict_and_a_problem_with_it(
    tmp_path: Path, key: str, near: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A misspelt list key would load 0 callbacks without a word: never silent."""
    loose = tmp_path / "loose.yaml"
    loose.write_text(f"stage: sft\ncustom_callbacks_only: false\n{key}: [log]\n", "utf-8")
    with caplog.at_level("WARNING", logger="callbridge"):
        config = callbridge.load(loose)
    [warning] = config.warnings
    assert (warning.key_path, warning.message) == (
        key,
        f"unknown key {key!r}. Did you mean {near!r}? Known keys: {', '.join(OPTION_KEYS)}. "
        "It is ignored; rename it, or set strict: true to make this an error",
    )
    assert f"callbridge: {loose}: {key}: unknown key {key!r}" in caplog.text
    strict = tmp_path / "strict.yaml"
    strict.write_text(f"stage: sft\nstrict: true\n{key}: [log]\n", "utf-8")
    with pytest.raises(ConfigError) as info:
        callbridge.load(strict)
    [problem] = info.value.problems
    assert (problem.key_path, problem.message) == (
        key,
        f"unknown key {key!r}. Did you mean {near!r}? Known keys: {', '.join(OPTION_KEYS)}.",
    )


def test_yaml_merge_keys_work_and_later_keys_override(tmp_path: Path) -> None:
    """``<<: *anchor`` is plain YAML that training configs use; it is not a Python tag."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        "defaults: &es\n  early_stopping_patience: 2\n  metric: eval_loss\n"
        "custom_callbacks:\n  - name: early_stopping\n    args:\n      <<: *es\n"
        "      early_stopping_patience: 4\n",
        encoding="utf-8",
    )
    [spec] = callbridge.load(path).callbacks
    assert spec.args == {"early_stopping_patience": 4, "metric": "eval_loss"}


def test_yaml_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "custom_callbacks:\n  - name: log\n    name: early_stopping\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert str(info.value) == (
        f"{path}: invalid YAML at line 3, column 5: while reading a mapping, found the key 'name' "
        "twice (first at line 2, column 5, again at line 3, column 5); the first would be "
        "silently lost: keep one"
    )


def test_yaml_python_tags_never_construct_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        f"custom_callbacks:\n  - !!python/object/apply:os.system ['touch {marker}']\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert not marker.exists()
    assert info.value.message.startswith(
        "YAML at line 2, column 5: could not determine a constructor"
    )
    assert info.value.message.endswith(
        "callbridge reads YAML safely and never builds Python objects from tags: remove the tag "
        "and name the callback instead"
    )


@pytest.mark.parametrize("suffix", [".yml", ".YAML"])
def test_yaml_suffixes_are_recognised_in_any_case(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"train{suffix}"
    path.write_text("custom_callbacks: [log]\n", encoding="utf-8")
    assert callbridge.load(path).callbacks == [CallbackSpec("log")]


def test_a_path_may_be_a_str(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("custom_callbacks: [log]\n", encoding="utf-8")
    assert callbridge.load(str(path)).source == str(path)


def test_a_mapping_is_a_source() -> None:
    config = callbridge.load({"custom_callbacks": ["log"], "other_tool_key": 1})
    assert config == CallbacksConfig([CallbackSpec("log")])
    assert config.source == "<mapping>"


def test_a_mapping_shaped_like_pyproject_uses_its_tool_callbacks() -> None:
    config = callbridge.load({"project": {}, "tool": {"callbacks": {"custom_callbacks": ["log"]}}})
    assert config.callbacks == [CallbackSpec("log")]
    assert config.callbacks[0].key_path == "tool.callbacks.custom_callbacks[0]"


def test_a_loaded_config_is_returned_as_is() -> None:
    config = callbridge.load({"custom_callbacks": ["log"]})
    assert callbridge.load(config) is config


def test_something_that_is_not_a_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        callbridge.load(42)  # type: ignore[arg-type]
    assert str(info.value) == "<source>: expected a file path or a mapping (got 42 that is an int)"


def test_a_missing_file_names_where_it_was_looked_for(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "callbacks.yaml"
    with pytest.raises(ConfigError) as info:
        callbridge.load(path)
    assert str(info.value) == f"{path}: file not found (looked for {path}); check the path"


def test_a_config_error_is_a_value_error(tmp_path: Path) -> None:
    """Callers that already catch ValueError for bad settings catch ours too."""
    path = tmp_path / "list.yaml"
    path.write_text("- log\n- early_stopping\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a mapping at the top level") as info:
        callbridge.load(path)
    assert str(info.value) == (
        f"{path}: expected a mapping at the top level (got ['log', 'early_stopping'] that is a "
        "list)"
    )
