"""The bad-input corpus (tests/fixtures/bad and tests/fixtures/malformed): every file is refused
with the exact problem, naming the file and the key path or line, by ``load``, ``check``,
``build`` and ``show`` alike; nothing else escapes, nothing prints a secret or a control
character, nothing hangs (the adversarial files run in a child process with a memory limit
and a timeout), and nothing is silently dropped.

The figures before and after this corpus was written are in ``benchmarks/bad_inputs.py``.
"""

# ruff: noqa: E501 - the corpus table holds one file per line with its message whole

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import callbridge
from callbridge import CallbridgeError, ConfigError
from callbridge._build import check_config
from callbridge._cli import cmd_show

from .helpers import FIXTURES, subprocess_env
from .test__errors import CASES as MALFORMED_CASES
from .test__errors import MALFORMED, UNSET

BAD = FIXTURES / "bad"

#: Secret values the corpus reads from the environment (a secret-looking name, and a plain
#: name whose value lands in a URL's userinfo or query). None may appear in any output.
SECRETS = {
    "CB_TEST_API_KEY": "sk-live-CORPUS-4f9a1c",
    "CB_TEST_PW": "hunter2-CORPUS-77",
    "CB_TEST_TOKEN": "tok-CORPUS-123456",
    "CB_TEST_SECRET": "sec-CORPUS-9999",
}

# file -> (key path, a fragment of the message that is the point of the error).
# An empty key path: a problem of the whole file, whose message names the line when the
# file has lines to name (a syntax error); else it says what the file is.
CASES: dict[str, tuple[str, str]] = {
    "big_hex_max_failures.yaml": (
        "callback_max_failures",
        "an integer with more than 4300 digits; write a smaller number (or a string)",
    ),
    "big_hex_toml.toml": (
        "seed",
        "an integer with more than 4300 digits; write a smaller number (or a string)",
    ),
    "big_hex_yaml.yaml": (
        "seed",
        "an integer with more than 4300 digits; write a smaller number (or a string)",
    ),
    "big_int_json.json": (
        "",
        "invalid JSON: an integer with more than 4300 digits at line 1, column 39",
    ),
    "big_int_toml.toml": (
        "",
        "invalid TOML: an integer with more than 4300 digits at line 2, column 8",
    ),
    "big_int_yaml_arg.yaml": ("", "invalid YAML at line 4, column 32: cannot read"),
    "big_int_yaml_ignored.yaml": ("", "invalid YAML at line 3, column 7: cannot read"),
    "deep_json_100_ignored.json": (
        "",
        "nested more than 64 levels deep at line 1, column 103; callbridge reads configurations, not deep",
    ),
    "deep_json_5000.json": (
        "",
        "nested more than 64 levels deep at line 1, column 99; callbridge reads configurations, not deep data",
    ),
    "deep_json_object_200.json": (
        "",
        "nested more than 64 levels deep at line 1, column 414; callbridge reads configurations, not deep",
    ),
    "deep_toml_100_ignored.toml": (
        "",
        "nested more than 64 levels deep at line 2, column 73; callbridge reads configurations, not deep data",
    ),
    "deep_toml_5000.toml": (
        "",
        "nested more than 64 levels deep at line 2, column 69; callbridge reads configurations, not deep data",
    ),
    "deep_toml_inline_tables.toml": (
        "",
        "nested more than 64 levels deep at line 4, column 325; callbridge reads configurations, not deep",
    ),
    "deep_toml_tables.toml": (
        "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a",
        "nested more than 64 levels deep; callbridge reads configurations, not deep data",
    ),
    "deep_yaml_block_100.yaml": (
        "",
        "invalid YAML at line 67, column 129: nested more than 64 levels deep; callbridge reads",
    ),
    "deep_yaml_flow_800_arg.yaml": (
        "",
        "invalid YAML at line 4, column 70: nested more than 64 levels deep; callbridge reads",
    ),
    "deep_yaml_ignored_5000.yaml": (
        "",
        "invalid YAML at line 3, column 71: nested more than 64 levels deep; callbridge reads",
    ),
    "deep_yaml_mapping_flow.yaml": (
        "",
        "invalid YAML at line 3, column 260: nested more than 64 levels deep; callbridge reads",
    ),
    "dev_null.toml": (
        "",
        "is not a regular file (it is a character device); callbridge reads configuration files only",
    ),
    "dev_zero.yaml": (
        "",
        "is not a regular file (it is a character device); callbridge reads configuration files only",
    ),
    "escape_arg_key_newline.yaml": (
        "custom_callbacks[0].args.a\nb",
        "argument names must be identifiers (got 'a\\nb' that is a str)",
    ),
    "escape_entry_key.yaml": (
        "custom_callbacks[0].\x1b]0;title\x07",
        "unknown key '\\x1b]0;title\\x07'. An entry has: name, args, enabled",
    ),
    "escape_found_keys.yaml": (
        "",
        "no callbacks declared: expected a 'custom_callbacks' list (or a [tool.callbacks] table). Found",
    ),
    "escape_key_esc.toml": (
        "tool.callbacks.\x1b[2Jstrictt",
        "unknown key '\\x1b[2Jstrictt'. Did you mean 'strict'? Known keys: custom_callbacks,",
    ),
    "escape_name_esc.yaml": ("custom_callbacks[0]", "unknown callback '\\x1b[31mlogg\\x1b[0m'."),
    "escape_name_newline.yaml": (
        "custom_callbacks[0]",
        "unknown callback 'logg\\nforged: ok (1 callbacks)': not a registered name, and no module named",
    ),
    "escape_name_u2028.json": ("custom_callbacks[0]", "unknown callback 'log\\u2028forged'."),
    "json_custom_callbacks_int.json": (
        "custom_callbacks",
        "expected a list of callback names or {name, args} tables (got 3 that is an int). In TOML:",
    ),
    "json_duplicate_arg.json": (
        "custom_callbacks[0].args.metric",
        "the key 'metric' is given twice in one object (at line 1, column 59 and line 1, column 77); JSON",
    ),
    "json_duplicate_custom_callbacks.json": (
        "custom_callbacks",
        "the key 'custom_callbacks' is given twice in one object (at line 2, column 3 and line 3, column 3);",
    ),
    "json_duplicate_ignored.json": (
        "training.lr",
        "the key 'lr' is given twice in one object (at line 1, column 44 and line 1, column 53); JSON keeps",
    ),
    "json_duplicate_name.json": (
        "custom_callbacks[0].name",
        "the key 'name' is given twice in one object (at line 3, column 6 and line 4, column 6); JSON keeps",
    ),
    "json_duplicate_strict.json": (
        "strict",
        "the key 'strict' is given twice in one object (at line 1, column 2 and line 1, column 47); JSON",
    ),
    "json_empty_object.json": (
        "",
        "no callbacks declared: expected a 'custom_callbacks' list (or a [tool.callbacks] table).",
    ),
    "json_nan_name.json": ("custom_callbacks[0].name", "expected a str (got nan that is a float)"),
    "json_nul_byte.json": ("", "invalid JSON at line 1, column "),
    "json_top_string.json": ("", "expected a mapping at the top level (got 'log' that is a str)"),
    "json_trailing_comma.json": ("", "invalid JSON at line 1, column "),
    "latin1.toml": ("", "is not UTF-8 text (invalid continuation byte)"),
    "near_miss_callbacks_strict.yaml": (
        "callbacks",
        "unknown key 'callbacks'. Did you mean 'custom_callbacks'? Known keys: custom_callbacks,",
    ),
    "near_miss_dash_strict.yaml": (
        "custom-callbacks",
        "unknown key 'custom-callbacks'. Did you mean 'custom_callbacks'? Known keys: custom_callbacks,",
    ),
    "near_miss_json_strict.json": (
        "Custom_Callbacks",
        "unknown key 'Custom_Callbacks'. Did you mean 'custom_callbacks'? Known keys: custom_callbacks,",
    ),
    "near_miss_singular_strict.yaml": (
        "custom_callback",
        "unknown key 'custom_callback'. Did you mean 'custom_callbacks'? Known keys: custom_callbacks,",
    ),
    "near_miss_strict_string.yaml": (
        "Callbacks",
        "unknown key 'Callbacks'. Did you mean 'custom_callbacks'? Known keys: custom_callbacks,",
    ),
    "near_miss_top_toml_strict.toml": (
        "callbacks",
        "unknown key 'callbacks'. Did you mean 'custom_callbacks'? Known keys: custom_callbacks,",
    ),
    "near_miss_upper_strict.yaml": (
        "CUSTOM_CALLBACKS",
        "unknown key 'CUSTOM_CALLBACKS'. Did you mean 'custom_callbacks'? Known keys: custom_callbacks,",
    ),
    "pyproject_callbacks_string/pyproject.toml": (
        "tool.callbacks",
        "expected a table at tool.callbacks (got 'log' that is a str)",
    ),
    "secret_in_enabled.yaml": (
        "custom_callbacks[0].enabled",
        "expected bool (true/false, yes/no, on/off, 1/0) (got a str, value hidden)",
    ),
    "secret_in_max_failures.toml": (
        "tool.callbacks.callback_max_failures",
        "expected an int >= 1 (got a str, value hidden)",
    ),
    "secret_in_name.yaml": ("custom_callbacks[0]", "unknown callback '***'."),
    "secret_in_name_string.toml": (
        "tool.callbacks.custom_callbacks[0]",
        "unknown callback 'acme.***': not a registered name, and no module named 'acme'.",
    ),
    "secret_in_strict.yaml": (
        "strict",
        "expected bool (true/false, yes/no, on/off, 1/0) (got a str, value hidden)",
    ),
    "secret_literal_url.yaml": (
        "custom_callbacks[0].args.early_stopping_patience",
        "expected int (got 'https://***@example.invalid' that is a str)",
    ),
    "secret_typed_arg.yaml": (
        "custom_callbacks[0].args.retries",
        "expected int (got a str, value hidden)",
    ),
    "secret_unknown_arg.yaml": (
        "custom_callbacks[0].args.apikey",
        "unknown argument 'apikey' for 'sample_callbacks.Secretive'. Did you mean 'api_key'? Accepted:",
    ),
    "secret_url_password_plain_var.yaml": (
        "custom_callbacks[0].args.early_stopping_patience",
        "expected int (got 'https://***@example.invalid/x' that is a str)",
    ),
    "secret_url_query.yaml": (
        "custom_callbacks[0].args.early_stopping_patience",
        "expected int (got 'https://example.invalid/x?token=***' that is a str)",
    ),
    "toml_args_string.toml": (
        "tool.callbacks.custom_callbacks[0].args",
        "expected a table of arguments (got 'level=INFO' that is a str)",
    ),
    "toml_array_of_tables_section.toml": (
        "tool.callbacks",
        "expected a table at tool.callbacks (got [{'custom_callbacks': ['log']}] that is a list)",
    ),
    "toml_autoload_text.toml": (
        "tool.callbacks.autoload",
        "expected bool (true/false, yes/no, on/off, 1/0) (got 'sometimes' that is a str)",
    ),
    "toml_bad_escape.toml": ("", "invalid TOML: Unescaped"),
    "toml_builtin_typo.toml": (
        "tool.callbacks.custom_callbacks[0]",
        "unknown callback 'earlystopping'. Did you mean 'early_stopping'?",
    ),
    "toml_duplicate_key.toml": ("", "invalid TOML: Cannot overwrite a value"),
    "toml_duplicate_table.toml": ("", "invalid TOML: "),
    "toml_entry_unknown_key.toml": (
        "tool.callbacks.custom_callbacks[0].enable",
        "unknown key 'enable'. Did you mean 'enabled'? An entry has: name, args, enabled",
    ),
    "toml_max_failures_float.toml": (
        "tool.callbacks.callback_max_failures",
        "expected an int >= 1 (got 1.5 that is a float)",
    ),
    "toml_unclosed_array.toml": ("", "invalid TOML: Unclosed array (at end of document)"),
    "toml_whitespace_name.toml": (
        "tool.callbacks.custom_callbacks[0].name",
        "expected a callback name (got an empty string)",
    ),
    "trust_builtins_eval.yaml": (
        "custom_callbacks[0]",
        "'builtins.eval' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_builtins_exec.toml": (
        "tool.callbacks.custom_callbacks[0]",
        "'builtins:exec' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_builtins_input.yaml": (
        "custom_callbacks[0]",
        "'builtins.input' is a built-in function; callbridge calls from a configuration only callback",
    ),
    "trust_builtins_open.yaml": (
        "custom_callbacks[0]",
        "'builtins.open' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_enum_class.yaml": (
        "custom_callbacks[0]",
        "'sample_callbacks.Color' is a class that is not a callback class; callbridge calls from a",
    ),
    "trust_exits_on_import.yaml": (
        "custom_callbacks[0]",
        "unknown callback 'exits_on_import.Thing': not a registered name, and importing 'exits_on_import'",
    ),
    "trust_factory_returns_int.yaml": (
        "custom_callbacks[0]",
        "'sample_callbacks.make_number' is a function whose return annotation names no callback class;",
    ),
    "trust_functools_partial.yaml": (
        "custom_callbacks[0]",
        "'functools.partial' is a class that is not a callback class; callbridge calls from a configuration",
    ),
    "trust_logging_shutdown.yaml": (
        "custom_callbacks[0]",
        "'logging.shutdown' is a function whose return annotation names no callback class; callbridge calls",
    ),
    "trust_module.yaml": (
        "custom_callbacks[0]",
        "'os.path' is a module; callbridge calls from a configuration only callback classes",
    ),
    "trust_nested_os_system.yaml": (
        "custom_callbacks[0].args.judge",
        "'os.system' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_nested_popen.yaml": (
        "custom_callbacks[0].args.judge",
        "'subprocess.Popen' is a class that is not a callback class; callbridge calls from a configuration",
    ),
    "trust_ordered_dict.yaml": (
        "custom_callbacks[0]",
        "'collections.OrderedDict' is a class that is not a callback class; callbridge calls from a",
    ),
    "trust_os_exit.yaml": (
        "custom_callbacks[0]",
        "'os._exit' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_os_exit_colon.yaml": (
        "custom_callbacks[0]",
        "'os:_exit' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_os_kill.yaml": (
        "custom_callbacks[0]",
        "'os.kill' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_os_remove.json": (
        "custom_callbacks[0]",
        "'os.remove' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_os_sep.yaml": (
        "custom_callbacks[0]",
        "'os.sep' is '/' that is a str; callbridge calls from a configuration only callback classes",
    ),
    "trust_os_system.yaml": (
        "custom_callbacks[0]",
        "'os.system' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_pathlib_path.yaml": (
        "custom_callbacks[0]",
        "'pathlib.Path' is a class that is not a callback class; callbridge calls from a configuration only",
    ),
    "trust_plain_class_smart_like.yaml": (
        "custom_callbacks[0]",
        "'argparse.Namespace' is a class that is not a callback class; callbridge calls from a configuration",
    ),
    "trust_shutil_rmtree.yaml": (
        "custom_callbacks[0]",
        "'shutil.rmtree' is a function whose return annotation names no callback class; callbridge calls",
    ),
    "trust_signal_pause.yaml": (
        "custom_callbacks[0]",
        "'signal.pause' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_subprocess_popen.yaml": (
        "custom_callbacks[0]",
        "'subprocess:Popen' is a class that is not a callback class; callbridge calls from a configuration",
    ),
    "trust_sys_exit.yaml": (
        "custom_callbacks[0]",
        "'sys.exit' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_this_constant.yaml": (
        "custom_callbacks[0]",
        "'this.s' is \"Gur Mra bs Clguba, ol Gvz Crgref\\n\\nOrnhgvshy vf orggre guna htyl.\\nRkcyvpvg... that",
    ),
    "trust_time_sleep.yaml": (
        "custom_callbacks[0]",
        "'time.sleep' is a built-in function; callbridge calls from a configuration only callback classes",
    ),
    "trust_unannotated_factory.yaml": (
        "custom_callbacks[0]",
        "'sample_callbacks.unannotated_factory' is a function whose return annotation names no callback",
    ),
    "trust_webbrowser_open.yaml": (
        "custom_callbacks[0]",
        "'webbrowser.open' is a function whose return annotation names no callback class; callbridge calls",
    ),
    "two_sources.json": (
        "custom_callbacks",
        "callbacks are declared twice: in [tool.callbacks] and at the top level ('custom_callbacks'); only",
    ),
    "two_sources.toml": (
        "custom_callbacks",
        "callbacks are declared twice: in [tool.callbacks] and at the top level ('custom_callbacks'); only",
    ),
    "two_sources.yaml": (
        "custom_callbacks",
        "callbacks are declared twice: in [tool.callbacks] and at the top level ('custom_callbacks'); only",
    ),
    "two_sources_pyproject/pyproject.toml": (
        "custom_callbacks",
        "callbacks are declared twice: in [tool.callbacks] and at the top level ('custom_callbacks'); only",
    ),
    "two_sources_strict.toml": (
        "strict",
        "callbacks are declared twice: in [tool.callbacks] and at the top level ('strict'); only one would",
    ),
    "utf16_bom.yaml": ("", "is not UTF-8 text (invalid start byte)"),
    "yaml_alias_cycle_map.yaml": (
        "",
        "invalid YAML at line 3, column 11: the alias *a refers to a collection that contains it (a cycle);",
    ),
    "yaml_alias_cycle_seq.yaml": (
        "",
        "invalid YAML at line 3, column 11: the alias *a refers to a collection that contains it (a cycle);",
    ),
    "yaml_alias_undefined.yaml": (
        "",
        "invalid YAML at line 3, column 4: found undefined alias 'nowhere'",
    ),
    "yaml_arg_key_digit.yaml": (
        "custom_callbacks[0].args.1abc",
        "argument names must be identifiers (got '1abc' that is a str)",
    ),
    "yaml_arg_key_int.yaml": (
        "custom_callbacks[0].args.1",
        "argument names must be identifiers (got 1 that is an int)",
    ),
    "yaml_bad_date.yaml": (
        "",
        "invalid YAML at line 3, column 10: cannot read '2001-02-30' as !!timestamp (day is out of range for",
    ),
    "yaml_bad_date_month.yaml": (
        "",
        "invalid YAML at line 4, column 14: cannot read '2001-13-01' as !!timestamp (month must be in",
    ),
    "yaml_binary_bad.yaml": (
        "",
        "invalid YAML at line 3, column 4: failed to decode base64 data: Incorrect padding",
    ),
    "yaml_bomb_arg.yaml": (
        "",
        "invalid YAML at line 6, column 38: aliases expand to more than 100,000 values (an alias bomb?);",
    ),
    "yaml_bomb_entry.yaml": (
        "",
        "invalid YAML at line 5, column 36: aliases expand to more than 100,000 values (an alias bomb?);",
    ),
    "yaml_bomb_ignored.yaml": (
        "",
        "invalid YAML at line 7, column 36: aliases expand to more than 100,000 values (an alias bomb?);",
    ),
    "yaml_bomb_list.yaml": (
        "",
        "invalid YAML at line 5, column 36: aliases expand to more than 100,000 values (an alias bomb?);",
    ),
    "yaml_bomb_merge.yaml": (
        "",
        "invalid YAML at line 5, column 20: aliases expand to more than 100,000 values (an alias bomb?);",
    ),
    "yaml_bomb_strict.yaml": (
        "",
        "invalid YAML at line 5, column 36: aliases expand to more than 100,000 values (an alias bomb?);",
    ),
    "yaml_bool_tag_maybe.yaml": (
        "",
        "invalid YAML at line 3, column 7: cannot read 'maybe' as !!bool (not a valid bool); quote it to",
    ),
    "yaml_callback_errors_list.yaml": (
        "callback_errors",
        "expected one of 'log', 'disable', 'raise' (got ['log'] that is a list)",
    ),
    "yaml_control_char.yaml": (
        "",
        "invalid YAML: unacceptable character #x0007 at character 25 of the file: control characters are not",
    ),
    "yaml_custom_callbacks_bool.yaml": (
        "custom_callbacks",
        "expected a list of callback names or {name, args} tables (got True that is a bool). In TOML:",
    ),
    "yaml_custom_tag.yaml": (
        "",
        "YAML at line 3, column 4: could not determine a constructor for the tag '!include'; callbridge",
    ),
    "yaml_duplicate_arg.yaml": (
        "",
        "invalid YAML at line 3, column 26: while reading a mapping, found the key 'metric' twice (first at",
    ),
    "yaml_duplicate_ignored.yaml": (
        "",
        "invalid YAML at line 4, column 1: while reading a mapping, found the key 'lr' twice (first at line",
    ),
    "yaml_duplicate_name.yaml": (
        "",
        "invalid YAML at line 4, column 5: while reading a mapping, found the key 'name' twice (first at",
    ),
    "yaml_duplicate_tool.yaml": (
        "",
        "invalid YAML at line 4, column 3: while reading a mapping, found the key 'callbacks' twice (first",
    ),
    "yaml_empty_name.yaml": (
        "custom_callbacks[0].name",
        "expected a callback name (got an empty string)",
    ),
    "yaml_entry_bool.yaml": (
        "custom_callbacks[1]",
        "expected a callback name or a {name, args, enabled} table (got True that is a bool)",
    ),
    "yaml_entry_float.yaml": (
        "custom_callbacks[0]",
        "expected a callback name or a {name, args, enabled} table (got 1.5 that is a float)",
    ),
    "yaml_entry_null.yaml": (
        "custom_callbacks[0]",
        "expected a callback name or a {name, args, enabled} table (got None that is a NoneType)",
    ),
    "yaml_entry_set.yaml": (
        "custom_callbacks[0]",
        "expected a callback name or a {name, args, enabled} table (got {'log'} that is a set)",
    ),
    "yaml_exploding.yaml": (
        "custom_callbacks[0]",
        "building 'sample_callbacks.Exploding' failed: RuntimeError: cannot start with value 3",
    ),
    "yaml_float_tag_abc.yaml": (
        "",
        "invalid YAML at line 3, column 4: cannot read 'abc' as !!float (could not convert string to float:",
    ),
    "yaml_import_double_dot.yaml": (
        "custom_callbacks[0]",
        "unknown callback 'a..b': not a registered name, and no module named 'a'.",
    ),
    "yaml_import_leading_colon.yaml": (
        "custom_callbacks[0]",
        "unknown callback ':x': not a registered name, and ':x' is not an import path (expected",
    ),
    "yaml_import_missing_attr.yaml": (
        "custom_callbacks[0]",
        "unknown callback 'sample_callbacks.Nope': not a registered name, and module 'sample_callbacks' has",
    ),
    "yaml_import_trailing_colon.yaml": (
        "custom_callbacks[0].x",
        "unknown key 'x'. An entry has: name, args, enabled",
    ),
    "yaml_int_tag_abc.yaml": (
        "",
        "invalid YAML at line 3, column 5: cannot read 'abc' as !!int (invalid literal for int() with base",
    ),
    "yaml_int_tag_custom_callbacks.yaml": (
        "",
        "invalid YAML at line 1, column 19: cannot read 'xyz' as !!int (invalid literal for int() with base",
    ),
    "yaml_interp_digit.yaml": (
        "custom_callbacks[0].args.metric",
        "malformed '${1X}': expected ${VAR} or ${VAR:-default} with VAR made of letters, digits and '_' (for",
    ),
    "yaml_interp_empty.yaml": (
        "custom_callbacks[0].args.metric",
        "malformed '${}': expected ${VAR} or ${VAR:-default} with VAR made of letters, digits and '_' (for a",
    ),
    "yaml_interp_nested_brace.yaml": (
        "custom_callbacks[0].args.metric",
        "unclosed '${' (write ${VAR} or ${VAR:-default}; for a literal '${' write '$${')",
    ),
    "yaml_interp_unset_name.yaml": (
        "custom_callbacks[0]",
        "environment variable 'CALLBRIDGE_TEST_UNSET_VAR' is not set; set it, or give a default with",
    ),
    "yaml_interp_unset_strict.yaml": (
        "strict",
        "environment variable 'CALLBRIDGE_TEST_UNSET_VAR' is not set; set it, or give a default with",
    ),
    "yaml_map_tag_on_seq.yaml": (
        "",
        "invalid YAML at line 3, column 4: expected a mapping node, but found sequence",
    ),
    "yaml_max_failures_bool.yaml": (
        "callback_max_failures",
        "expected an int >= 1 (got True that is a bool)",
    ),
    "yaml_max_failures_negative.yaml": (
        "callback_max_failures",
        "expected an int >= 1 (got -1 that is an int)",
    ),
    "yaml_max_failures_text.yaml": (
        "callback_max_failures",
        "expected an int >= 1 (got 'three' that is a str)",
    ),
    "yaml_name_date.yaml": (
        "custom_callbacks[0].name",
        "expected a str (got datetime.date(2024, 1, 1) that is a date)",
    ),
    "yaml_name_list.yaml": (
        "custom_callbacks[0].name",
        "expected a str (got ['log'] that is a list)",
    ),
    "yaml_name_null.yaml": (
        "custom_callbacks[0].name",
        "expected a str (got None that is a NoneType)",
    ),
    "yaml_nested_missing_required.yaml": (
        "custom_callbacks[0].args.judge.args",
        "missing required argument 'interval' (expected int) for 'sample_callbacks.Needs'; add it under args",
    ),
    "yaml_nested_unknown_arg.yaml": (
        "custom_callbacks[0].args.judge.args.thresh",
        "unknown argument 'thresh' for 'sample_callbacks.Scorer'. Did you mean 'threshold'? Accepted:",
    ),
    "yaml_null_tag_value.yaml": (
        "",
        "invalid YAML at line 2, column 9: cannot read 'yes-please' as !!bool (not a valid bool); quote it",
    ),
    "yaml_omap_scalar.yaml": (
        "",
        "invalid YAML at line 3, column 4: while constructing an ordered map, expected a sequence, but found",
    ),
    "yaml_only_maybe.yaml": (
        "custom_callbacks_only",
        "expected bool (true/false, yes/no, on/off, 1/0) (got 'maybe' that is a str)",
    ),
    "yaml_pairs_scalar_items.yaml": (
        "",
        "invalid YAML at line 3, column 13: while constructing pairs, expected a mapping of length 1, but",
    ),
    "yaml_prints_on_import_unknown_arg.yaml": (
        "custom_callbacks[0].args.nope",
        "unknown argument 'nope' for 'prints_on_import.Quiet'. It takes no arguments.",
    ),
    "yaml_python_module.yaml": (
        "",
        "YAML at line 3, column 4: could not determine a constructor for the tag",
    ),
    "yaml_python_name.yaml": (
        "",
        "YAML at line 3, column 4: could not determine a constructor for the tag",
    ),
    "yaml_python_object_new.yaml": (
        "",
        "YAML at line 2, column 5: could not determine a constructor for the tag",
    ),
    "yaml_seq_tag_on_map.yaml": (
        "",
        "invalid YAML at line 3, column 4: expected a sequence node, but found mapping",
    ),
    "yaml_set_tag_scalar.yaml": (
        "",
        "invalid YAML at line 3, column 4: expected a mapping node, but found scalar",
    ),
    "yaml_strict_two.yaml": (
        "strict",
        "expected bool (true/false, yes/no, on/off, 1/0) (got 2 that is an int)",
    ),
    "yaml_tab_indent.yaml": (
        "",
        "invalid YAML at line 2, column 1: while scanning for the next token, found character that cannot",
    ),
    "yaml_this_unknown.yaml": (
        "custom_callbacks[0]",
        "unknown callback 'this.Nothing': not a registered name, and module 'this' has no attribute",
    ),
    "yaml_timestamp_tag_word.yaml": (
        "",
        "invalid YAML at line 3, column 4: cannot read 'yesterday' as !!timestamp (not a valid timestamp);",
    ),
    "yaml_tool_not_table.yaml": (
        "",
        "no callbacks declared: expected a 'custom_callbacks' list (or a [tool.callbacks] table). Found",
    ),
    "yaml_two_documents.yaml": (
        "",
        "invalid YAML at line 3, column 1: expected a single document in the stream, but found another",
    ),
    "yaml_typed_dict_int.yaml": (
        "custom_callbacks[0].args.extra",
        "expected int (got {'a': 'b'} that is a dict)",
    ),
    "yaml_typed_enum.yaml": (
        "custom_callbacks[0].args.color",
        "expected one of 'RED', 'GREEN' (got 'purple' that is a str)",
    ),
    "yaml_typed_float.yaml": (
        "custom_callbacks[0].args.ratio",
        "expected float (got 'abc' that is a str)",
    ),
    "yaml_typed_int_float.yaml": (
        "custom_callbacks[0].args.count",
        "expected int (got 1.5 that is a float)",
    ),
    "yaml_typed_int_inf.yaml": (
        "custom_callbacks[0].args.count",
        "expected int (got inf that is a float)",
    ),
    "yaml_typed_int_nan.yaml": (
        "custom_callbacks[0].args.ratio",
        "expected float (got [nan] that is a list)",
    ),
    "yaml_typed_list_int.yaml": (
        "custom_callbacks[0].args.sizes",
        "expected int (got ['x'] that is a list)",
    ),
    "yaml_typed_optional_int.yaml": (
        "custom_callbacks[0].args.maybe",
        "expected int or None (got 'x' that is a str)",
    ),
    "yaml_unclosed_quote.yaml": (
        "",
        "invalid YAML at line 3, column 1: while scanning a quoted scalar, found unexpected end of stream",
    ),
}

#: Problems found only when the callback is constructed: ``show`` resolves without calling.
CONSTRUCT_TIME = {"yaml_exploding.yaml"}


def corpus_files() -> list[str]:
    return sorted(
        p.relative_to(BAD).as_posix()
        for p in BAD.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != "README.md"
    )


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(UNSET, raising=False)


def test_the_corpus_holds_150_files_and_each_has_its_expectation() -> None:
    files = corpus_files()
    assert files == sorted(CASES)
    malformed = [p for p in MALFORMED.rglob("*") if p.is_file()]
    assert len(files) + len(malformed) >= 150


def matching(problems: Any, path: Path, key_path: str, fragment: str) -> list[Any]:
    """The problems that are the expected one; every problem must name the file."""
    assert problems, "no problem reported: a silent loss"
    assert {p.source for p in problems} == {str(path)}
    return [p for p in problems if p.key_path == key_path and fragment in p.message]


def attempt(function: Callable[..., Any], *args: Any) -> tuple[Any, ConfigError | None]:
    """``function(*args)``, and the ConfigError it raised, if it did."""
    try:
        return function(*args), None
    except ConfigError as exc:
        return None, exc


def outputs_are_clean(*texts: str) -> None:
    for text in texts:
        for value in SECRETS.values():
            assert value not in text
        assert "\x1b" not in text
        assert "\u2028" not in text
        assert not any(line.startswith("forged") for line in text.splitlines())


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_bad_input_is_one_config_error_in_load_check_build_and_show(name: str) -> None:
    key_path, fragment = CASES[name]
    path = BAD / name
    # check: every problem, the expected one among them.
    config, problems = check_config(str(path))
    assert matching(problems, path, key_path, fragment), [str(p) for p in problems]
    if not key_path:  # a whole-file problem says where in the file, or what the file is
        [problem] = problems
        assert (
            "line" in problem.message
            or "character" in problem.message
            or any(
                what in problem.message
                for what in (
                    "not a regular file",
                    "not UTF-8",
                    "too deep to parse",
                    "Exceeds the limit",
                    "no callbacks declared",
                    "expected a mapping at the top level",
                    "end of document",
                )
            )
        ), problem.message
    # load: refuses what is wrong with the file itself; what needs the callback is build's.
    _, refused = attempt(callbridge.load, path)
    if refused is not None:
        assert {p.source for p in refused.problems} == {str(path)}
    else:
        assert config is not None
    # build, strict: the same problem raised.
    with pytest.raises(ConfigError) as info:
        callbridge.build(path, strict=True)
    assert matching(info.value.problems, path, key_path, fragment)
    # show: raises it (a file it cannot read) or lists it as a problem, exit status 1.
    out = io.StringIO()
    status, refused = attempt(cmd_show, str(path), False, out)
    if refused is not None:
        assert matching(refused.problems, path, key_path, fragment)
        shown = str(refused)
    else:
        shown = out.getvalue()
        assert status == (0 if name in CONSTRUCT_TIME else 1)
        assert name in CONSTRUCT_TIME or "  problem: " in shown
    outputs_are_clean(shown, str(ConfigError(problems)), repr(config))


@pytest.mark.parametrize("name", sorted(MALFORMED_CASES))
def test_every_malformed_input_also_fails_show_and_check_with_the_file(name: str) -> None:
    key_path, fragment = MALFORMED_CASES[name]
    path = MALFORMED / name
    _, problems = check_config(str(path))
    assert matching(problems, path, key_path, fragment)
    status, refused = attempt(cmd_show, str(path), False, io.StringIO())
    if refused is not None:
        assert matching(refused.problems, path, key_path, fragment)
    else:
        assert status == 1 or name == "constructor_rejects.yaml"


def test_check_of_the_whole_corpus_in_one_process_prints_sentences_only(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """No traceback, no command run (PWNED), nothing an import printed, no secret, no ESC."""
    paths = [str(BAD / name) for name in sorted(CASES)]
    proc = cli("check", *paths, env=SECRETS, unset=(UNSET,))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    assert "PWNED" not in output
    assert "Zen of Python" not in output
    assert "HELLO FROM AN IMPORT" not in output
    outputs_are_clean(output)
    for path in paths:
        assert f"\n{path}: " in "\n" + proc.stdout
    summaries = [line for line in proc.stdout.splitlines() if not line.startswith("  ")]
    assert len(summaries) == len(paths)
    # Not one file passes (no silent loss): each says how many problems it has.
    assert all(line.endswith((": 1 problem", " problems")) for line in summaries), summaries


def test_show_json_and_the_repr_mask_a_callback_name_read_from_a_secret_variable(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    path = tmp_path / "named.yaml"
    path.write_text(
        "custom_callbacks:\n  - name: ${CB_TEST_API_KEY}\n  - name: log\n"
        "    args: {logger_name: 'https://user:${CB_TEST_PW}@example.invalid/?token=${CB_TEST_PW}'}\n",
        encoding="utf-8",
    )
    for args in (["show", "--json"], ["show"], ["check"]):
        proc = cli(*args, str(path), env=SECRETS)
        assert proc.returncode == 1
        outputs_are_clean(proc.stdout + proc.stderr)
        assert "***" in proc.stdout
    payload = json.loads(cli("show", "--json", str(path), env=SECRETS).stdout)
    assert payload["callbacks"][0]["name"] == "***"
    assert payload["callbacks"][1]["args"]["logger_name"] == (
        "https://***@example.invalid/?token=***"
    )
    outputs_are_clean(repr(callbridge.load(path)))


# Hangs and memory: each adversarial file in a child process under a memory limit and a
# timeout. The bounds are generous hang detectors, not performance figures.

CHILD = """
import resource, sys
limit = 1536 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from callbridge._cli import main
sys.exit(main(["check", sys.argv[1]]))
"""

ADVERSARIAL = [
    "yaml_bomb_ignored.yaml",
    "yaml_bomb_arg.yaml",
    "yaml_bomb_strict.yaml",
    "yaml_bomb_entry.yaml",
    "yaml_bomb_list.yaml",
    "yaml_bomb_merge.yaml",
    "yaml_alias_cycle_seq.yaml",
    "yaml_alias_cycle_map.yaml",
    "deep_json_5000.json",
    "deep_toml_5000.toml",
    "deep_yaml_ignored_5000.yaml",
    "deep_yaml_flow_800_arg.yaml",
    "big_int_json.json",
    "big_hex_toml.toml",
    "dev_zero.yaml",
    "trust_time_sleep.yaml",
    "trust_signal_pause.yaml",
    "trust_builtins_input.yaml",
    "trust_os_exit.yaml",
]


def run_bounded(path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        env=subprocess_env(**SECRETS),
        stdin=subprocess.DEVNULL,
        timeout=timeout,  # a hang fails the test with TimeoutExpired
        check=False,
    )


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_files_end_with_a_sentence_within_bounds(name: str) -> None:
    key_path, fragment = CASES[name]
    path = BAD / name
    proc = run_bounded(path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "MemoryError" not in proc.stderr
    where = f"{path}: {key_path}: " if key_path else f"{path}: "
    assert where in proc.stdout
    assert fragment in proc.stdout


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_without_waiting_for_a_writer(fifo: Path) -> None:
    proc = run_bounded(fifo, timeout=30)
    assert proc.returncode == 1
    assert f"{fifo}: is not a regular file (it is a FIFO (named pipe));" in proc.stdout


def test_a_file_over_the_size_cap_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    from callbridge._sources import MAX_BYTES

    path = tmp_path / "huge.yaml"
    with path.open("w", encoding="utf-8") as stream:
        stream.write("custom_callbacks: [log]\nnotes: |\n")
        line = "  " + "x" * 1022 + "\n"
        for _ in range(MAX_BYTES // len(line) + 2):
            stream.write(line)
    proc = run_bounded(path)
    assert proc.returncode == 1
    assert f"{path}: is too large (" in proc.stdout
    assert f"the limit is {MAX_BYTES:,}" in proc.stdout


def test_a_nul_byte_in_a_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        callbridge.load("conf\0ig.yaml")
    assert (
        str(info.value)
        == "conf\\x00ig.yaml: the path contains a NUL byte; no file can have that name"
    )


def test_a_10_mb_toml_is_parsed_once_by_check_and_once_by_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import callbridge._sources as sources

    path = tmp_path / "big.toml"
    with path.open("w", encoding="utf-8") as stream:
        stream.write('[tool.callbacks]\ncustom_callbacks = ["log"]\n\n[data]\n')
        for i in range(170_000):
            stream.write(f'k{i} = "{"x" * 48}"\n')
    assert path.stat().st_size > 10_000_000
    calls: list[int] = []
    real = sources._parse_toml

    def counting(text: str, name: str) -> Any:
        calls.append(len(text))
        return real(text, name)

    monkeypatch.setattr(sources, "_parse_toml", counting)
    from callbridge._cli import cmd_check

    assert cmd_check([str(path)], [], io.StringIO()) == 0
    assert len(calls) == 1
    assert cmd_show(str(path), False, io.StringIO()) == 0
    assert len(calls) == 2


# The trust rule: nothing a refused name leads to is ever called.


@pytest.mark.parametrize(
    "name",
    [
        "trust_os_system.yaml",
        "trust_subprocess_popen.yaml",
        "trust_nested_popen.yaml",
        "trust_nested_os_system.yaml",
    ],
)
def test_refused_commands_never_run_even_when_not_strict(
    name: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    built = callbridge.build(BAD / name, strict=False)
    assert built == []
    captured = capfd.readouterr()
    assert "PWNED" not in captured.out + captured.err
    assert "callbridge calls from a configuration only callback classes" in caplog.text


def test_an_annotated_factory_and_a_registered_function_are_trusted() -> None:
    config = {
        "custom_callbacks": [{"name": "sample_callbacks.make_recorder", "args": {"tag": "t"}}]
    }
    assert [type(cb).__name__ for cb in callbridge.build(config, strict=True)] == ["Recorder"]
    from sample_callbacks import unannotated_factory

    callbridge.register("unannotated", unannotated_factory)
    assert [
        type(cb).__name__ for cb in callbridge.build({"custom_callbacks": ["unannotated"]})
    ] == ["Recorder"]


def test_a_nested_entry_may_name_a_subclass_of_its_parameters_annotation() -> None:
    """``generation_config: GenerationConfig | None`` takes ``transformers.GenerationConfig``."""
    import attrs

    @attrs.define
    class TakesPath(callbridge.Callback):
        where: PurePath | None = None

    callbridge.register("takes_path", TakesPath)
    ok = {"name": "takes_path", "args": {"where": {"name": "pathlib.PurePosixPath"}}}
    [built] = callbridge.build({"custom_callbacks": [ok]}, strict=True)
    assert isinstance(built.where, PurePath)
    bad = {"name": "takes_path", "args": {"where": {"name": "collections.OrderedDict"}}}
    [problem] = callbridge.check({"custom_callbacks": [bad]})
    assert problem.key_path == "custom_callbacks[0].args.where"
    assert problem.message.startswith("'collections.OrderedDict' is a class that is not a callback")


def test_check_and_show_swallow_what_an_import_prints(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    path = tmp_path / "prints.yaml"
    path.write_text("custom_callbacks: [prints_on_import.Quiet]\n", encoding="utf-8")
    check = cli("check", str(path))
    assert (check.returncode, check.stdout) == (0, f"{path}: ok (1 callbacks)\n")
    show = cli("show", "--json", str(path))
    assert json.loads(show.stdout)["callbacks"][0]["name"] == "prints_on_import.Quiet"


def test_show_escapes_names_so_that_no_line_is_forged(tmp_path: Path) -> None:
    path = BAD / "escape_name_newline.yaml"
    out = io.StringIO()
    assert cmd_show(str(path), False, out) == 1
    lines = out.getvalue().splitlines()
    assert "  [0] logg\\nforged: ok (1 callbacks)" in lines
    assert not any(line.startswith("forged") for line in lines)


# Property: YAML, TOML and JSON text assembled from the pieces that break parsers (tags,
# anchors and aliases, deep brackets, long integers, impossible dates, duplicates, control
# characters) raises nothing but CallbridgeError from load and build, and check returns.

YAML_PIECES = [
    "custom_callbacks:", "  - log", "  - name: early_stopping", "    args:", "      metric: x",
    "strict: true", "callbacks: [log]", "a: &a [x, x, x]", "b: &b [*a, *a, *a, *a]", "c: *b",
    "d: &d {k: *d}", "e: !!int abc", "f: !!bool maybe", "g: !!set 5", "h: 2001-02-30",
    "i: !!python/name:os.system", "j: " + "[" * 70, "]" * 70, "k: " + "9" * 4400, "l: 0x" + "f" * 4000,
    "custom_callbacks: *b", "- os.system", "  - sys.exit", "  - {name: subprocess:Popen}",
    "m: !!binary zz", "n: !!omap [1]", "o: !!timestamp x", "p: !!float y", "'q\\nr': 1",
    "s: \"\\e[2J\"", "---", "...", "\t- x", "t: ${CB_TEST_API_KEY}", "u: ${", "lr: 1", "lr: 2",
    "{", "}", "[", "]", ":", "- ", "? [1]", ": 2", "<<: *a", "v: !!str", "w: !!null x",
]  # fmt: skip
TOML_PIECES = [
    "[tool.callbacks]", 'custom_callbacks = ["log"]', "strict = true", "x = " + "[" * 70,
    "]" * 70, "y = " + "9" * 4400, "z = 0x" + "f" * 4000, '"\\u001b" = 1', "[tool.callbacks]",
    'custom_callbacks = ["os.system"]', "a = 1", "a = 2", "[[tool.callbacks]]", "callbacks = 1",
    "b = {c = {d = {e = 1}}}", "[" + ".".join(["t"] * 70) + "]", 'n = "${CB_TEST_TOKEN}"', "=",
]  # fmt: skip
JSON_PIECES = [
    "{", "}", "[", "]", ",", ":", '"custom_callbacks"', '"log"', '"os.system"', '"name"',
    '"args"', '"strict"', "true", "9" * 4400, "[" * 70, "]" * 70, '"tool"', '"callbacks"',
    "NaN", "1e999", '"\\u001b"', "null",
]  # fmt: skip


def assembled(pieces: list[str], sep: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=12).map(sep.join)


def only_callbridge_errors(path: Path) -> None:
    with contextlib.suppress(CallbridgeError):
        callbridge.load(path)
    with contextlib.suppress(CallbridgeError):
        callbridge.build(path, strict=True)
    callbridge.check(path)


TEXT = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@TEXT
@given(text=assembled(YAML_PIECES, "\n"))
def test_assembled_yaml_raises_only_callbridge_errors(text: str, tmp_path: Path) -> None:
    path = tmp_path / "any.yaml"
    path.write_text(text, encoding="utf-8")
    only_callbridge_errors(path)


@TEXT
@given(text=assembled(TOML_PIECES, "\n"))
def test_assembled_toml_raises_only_callbridge_errors(text: str, tmp_path: Path) -> None:
    path = tmp_path / "any.toml"
    path.write_text(text, encoding="utf-8")
    only_callbridge_errors(path)


@TEXT
@given(text=assembled(JSON_PIECES, ""))
def test_assembled_json_raises_only_callbridge_errors(text: str, tmp_path: Path) -> None:
    path = tmp_path / "any.json"
    path.write_text(text, encoding="utf-8")
    only_callbridge_errors(path)


@TEXT
@given(
    depth=st.integers(min_value=1, max_value=3000),
    key=st.sampled_from(["notes", "custom_callbacks", "strict"]),
)
def test_any_nesting_depth_in_any_key_is_read_or_refused_with_a_config_error(
    depth: int, key: str
) -> None:
    data: Any = 1
    for _ in range(depth):
        data = [data]
    only_mapping = (
        {"custom_callbacks": ["log"], key: data} if key != "custom_callbacks" else {key: data}
    )
    with contextlib.suppress(CallbridgeError):
        callbridge.build(only_mapping, strict=True)
    callbridge.check(only_mapping)


def test_check_and_show_print_a_near_miss_warning_without_strict(
    cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("stage: sft\ncustom_callbacks: [log]\nCallbacks: [early_stopping]\n", "utf-8")
    warning = (
        f"  warning: {path}: Callbacks: unknown key 'Callbacks'. Did you mean 'custom_callbacks'?"
    )
    check = cli("check", str(path))
    assert check.returncode == 0
    assert check.stdout.startswith(f"{path}: ok (1 callbacks)\n{warning}")
    show = cli("show", str(path))
    assert show.returncode == 0
    assert warning in show.stdout
    assert json.loads(cli("show", "--json", str(path)).stdout)["warnings"][0].startswith(
        f"{path}: Callbacks: unknown key 'Callbacks'."
    )
