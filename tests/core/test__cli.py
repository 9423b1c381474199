"""The ``callbridge`` command: ``list``, ``check``, ``show`` (callbridge._cli)."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

import callbridge
from callbridge._build import signature_of
from callbridge._cli import describe_args, main
from callbridge._coerce import is_untyped, type_name
from callbridge._registry import BUILTINS

from .helpers import FIXTURES

Cli = Callable[..., subprocess.CompletedProcess[str]]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# list


def test_list_shows_every_builtin_with_argument_names_types_and_defaults(cli: Cli) -> None:
    proc = cli("list")
    assert proc.returncode == 0
    blocks = {
        block.splitlines()[0].split("  [")[0]: block for block in proc.stdout.strip().split("\n\n")
    }
    for name, target in BUILTINS.items():
        block = blocks[name]
        assert block.splitlines()[0] == f"{name}  [built-in: {target}]"
        factory = callbridge.default_registry().resolve(name)[0]
        for param in signature_of(factory).params.values():
            kind = "any" if is_untyped(param.annotation) else type_name(param.annotation)
            assert f"\n    {param.name}: {kind} = {param.describe_default()}" in block


def test_list_spells_types_and_defaults_for_a_reader(cli: Cli) -> None:
    out = cli("list").stdout
    assert "    early_stopping_patience: int = 1\n" in out
    assert "    mode: one of 'min', 'max' = 'min'\n" in out
    assert "    jsonl: Path or None = None\n" in out
    assert (
        "    Stop training after ``early_stopping_patience`` evaluations without improvement.\n"
        in out
    )


def test_list_json_is_machine_readable(cli: Cli) -> None:
    rows = {row["name"]: row for row in json.loads(cli("list", "--json").stdout)}
    assert rows["early_stopping"]["origin"] == "built-in"
    assert {"name": "metric", "type": "str", "default": "'eval_loss'"} in rows["early_stopping"][
        "args"
    ]


def test_list_shows_registered_plugins_hides_secret_defaults_and_survives_broken_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @attrs.define
    class Upload(callbridge.Callback):
        """Uploads metrics."""

        url: str
        api_key: str = attrs.field(default="sk-default-0001", repr=False)
        interval: int = 50

    callbridge.register("acme.upload", Upload)
    callbridge.register("acme.broken", "broken_plugin:Thing")
    callbridge.register("acme.kwargs", "sample_callbacks:Kwargs")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "acme.upload  [registered: " in out
    assert "    url: str = required\n    api_key: str = ***\n    interval: int = 50\n" in out
    assert "sk-default-0001" not in out
    assert "acme.broken  [registered: broken_plugin:Thing]\n    (cannot be imported: " in out
    assert "ImportError: simulated: the plugin needs a package that is not installed" in out
    assert "    **kwargs: any = -\n" in out


def test_describe_args_names_factories_for_defaults() -> None:
    from sample_callbacks import Typed

    rows = {row["name"]: row for row in describe_args(Typed)}
    assert rows["tags"] == {"name": "tags", "type": "list[str]", "default": "list()"}
    assert rows["color"]["type"] == "one of 'RED', 'GREEN'"


# check


def test_check_ok_exits_0_and_counts_enabled_and_disabled(tmp_path: Path, cli: Cli) -> None:
    path = write(
        tmp_path,
        "ok.yaml",
        "custom_callbacks:\n  - log\n  - {name: early_stopping, enabled: false}\n",
    )
    proc = cli("check", str(path))
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f"{path}: ok (1 callbacks, 1 disabled)\n",
        "",
    )


def test_check_problems_exit_1(tmp_path: Path, cli: Cli) -> None:
    path = write(tmp_path, "bad.yaml", "custom_callbacks: [bemaa]\n")
    proc = cli("check", str(path))
    assert proc.returncode == 1
    assert proc.stdout.startswith(
        f"{path}: 1 problem\n  {path}: custom_callbacks[0]: unknown callback 'bemaa'."
    )


def test_check_several_files_reports_each_and_fails_if_any_fails(tmp_path: Path, cli: Cli) -> None:
    good = write(tmp_path, "good.toml", 'custom_callbacks = ["log"]\n')
    bad = write(tmp_path, "bad.toml", 'custom_callbacks = ["logg"]\n')
    proc = cli("check", str(good), str(bad))
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == f"{good}: ok (1 callbacks)"
    assert proc.stdout.splitlines()[1] == f"{bad}: 1 problem"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["check"],
        ["show"],
        ["show", "a.yaml", "b.yaml"],
        ["check", "--frobnicate", "x.yaml"],
    ],
    ids=[
        "nothing",
        "unknown-command",
        "check-no-file",
        "show-no-file",
        "show-two-files",
        "unknown-option",
    ],
)
def test_usage_errors_exit_2(argv: list[str], cli: Cli) -> None:
    proc = cli(*argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: callbridge")
    assert "Traceback" not in proc.stderr


def test_help_exits_0(cli: Cli) -> None:
    proc = cli("--help")
    assert proc.returncode == 0
    commands = [
        line.split()[0]
        for line in proc.stdout.splitlines()
        if line[:4] == "    " and line[4:5].isalpha()
    ]
    assert commands == ["list", "check", "show", "monitor", "ctl"]


def test_check_treats_adapter_context_names_as_provided_and_inject_adds_more(
    tmp_path: Path, cli: Cli
) -> None:
    path = write(
        tmp_path,
        "inj.yaml",
        "custom_callbacks:\n  - {name: sample_callbacks.Smart, args: {custom_arg: x}}\n"
        "  - sample_callbacks.WantsTracker\n",
    )
    proc = cli("check", str(path))
    assert proc.returncode == 1
    assert (
        "missing required argument 'tracker' (expected Any) for 'sample_callbacks.WantsTracker'"
        in proc.stdout
    )
    assert "Smart" not in proc.stdout
    assert cli("check", "--inject", "tracker", str(path)).returncode == 0


def test_check_the_projects_own_pyproject(cli: Cli) -> None:
    """The quickstart: ``callbridge check pyproject.toml`` on this repository passes."""
    root = FIXTURES.parents[1]
    proc = cli("check", "pyproject.toml", cwd=root)
    assert (proc.returncode, proc.stdout) == (0, "pyproject.toml: ok (2 callbacks)\n")


def test_main_in_process_leaves_the_library_log_level_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("callbridge")
    before = logger.level
    path = write(tmp_path, "c.yaml", "custom_callbacks: [log]\n")
    assert main(["check", str(path)]) == 0
    assert logger.level == before


def test_show_of_an_unreadable_file_exits_1_with_one_sentence(tmp_path: Path, cli: Cli) -> None:
    missing = tmp_path / "missing.yaml"
    proc = cli("show", str(missing))
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"callbridge: {missing}: file not found (looked for {missing}); check the path\n"
    )


# show


SECRETS = {
    "CB_UPLOAD_TOKEN": "tok-1f2e3d",  # a secret-looking variable inside a non-secret argument
    "CB_API_KEY": "key-4c5b6a",
    "CB_PASSWORD": "pw-7a8b9c",
    "CB_PLAIN_HIDDEN": "hid-0d1e2f",  # a plain variable into an attrs field with repr=False
}
LITERAL_SECRETS = (
    "literal-token-abc",
    "literal-auth-xyz",
    "literal-judge-key",
    "disabled-literal-key",
)

SHOW_CONFIG = """\
custom_callbacks:
  - name: sample_callbacks.Secretive
    args:
      endpoint: "https://collector.example/${CB_UPLOAD_TOKEN}"
      api_key: "${CB_API_KEY}"
      token: literal-token-abc
      password: "${CB_PASSWORD}"
      hidden: "${CB_PLAIN_HIDDEN}"
      retries: "${CB_RETRIES}"
  - name: sample_callbacks.Evaluator
    args:
      judge: {name: sample_callbacks.Scorer, args: {api_key: literal-judge-key, threshold: 0.5}}
      options: {auth_header: literal-auth-xyz, rounds: 2}
  - name: sample_callbacks.Secretive
    enabled: false
    args: {api_key: disabled-literal-key, endpoint: "http://plain.example"}
"""


@pytest.mark.parametrize("fmt", [[], ["--json"]], ids=["text", "json"])
def test_show_masks_every_kind_of_secret(fmt: list[str], tmp_path: Path, cli: Cli) -> None:
    path = write(tmp_path, "secrets.yaml", SHOW_CONFIG)
    proc = cli("show", *fmt, str(path), env={**SECRETS, "CB_RETRIES": "3"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    for value in [*SECRETS.values(), *LITERAL_SECRETS]:
        assert value not in output
    # What is not secret is shown, resolved and coerced.
    if fmt:
        view = json.loads(proc.stdout)
        first, evaluator, disabled = view["callbacks"]
        assert first["args"] == {
            "endpoint": "***",
            "api_key": "***",
            "token": "***",
            "password": "***",
            "hidden": "***",
            "retries": 3,
        }
        assert evaluator["args"]["judge"]["args"] == {"api_key": "***", "threshold": 0.5}
        assert evaluator["args"]["options"] == {"auth_header": "***", "rounds": 2}
        assert disabled == {
            "name": "sample_callbacks.Secretive",
            "key_path": "custom_callbacks[2]",
            "enabled": False,
            "args": {"api_key": "***", "endpoint": "http://plain.example"},
        }
    else:
        assert "        retries = 3\n" in proc.stdout
        assert '        endpoint = "***"\n' in proc.stdout
        assert "  [2] sample_callbacks.Secretive  (disabled)\n" in proc.stdout


def test_show_lists_options_origins_and_problems(tmp_path: Path, cli: Cli) -> None:
    path = write(
        tmp_path,
        "pyproject.toml",
        '[tool.callbacks]\nstrict = true\ncustom_callbacks = ["log", { name = "early_stopping", '
        'args = { early_stopping_patience = "4OO" } }]\n',
    )
    proc = cli("show", str(path))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{path} (tool.callbacks)"
    assert {
        "  custom_callbacks_only = false",
        "  strict = true",
        '  callback_errors = "log"',
        "  callback_max_failures = 3",
    } <= set(lines)
    assert "  [0] log  [built-in: callbridge.callbacks.log:LogCallback]" in lines
    assert proc.stdout.rstrip().endswith(
        f"  problem: {path}: tool.callbacks.custom_callbacks[1].args.early_stopping_patience: "
        "expected int (got '4OO' that is a str)"
    )


def test_check_never_prints_a_secret_value_in_a_problem(tmp_path: Path, cli: Cli) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        "custom_callbacks:\n  - name: sample_callbacks.Secretive\n    args:\n"
        '      retries: "${CB_RETRY_TOKEN}"\n      api_key: 42\n',
    )
    proc = cli("check", str(path), env={"CB_RETRY_TOKEN": "tok-not-a-number-77"})
    assert proc.returncode == 1
    assert "tok-not-a-number-77" not in proc.stdout + proc.stderr
    assert "custom_callbacks[0].args.retries: expected int (got a str, value hidden)" in proc.stdout
    assert (
        "custom_callbacks[0].args.api_key: expected str or None (got an int, value hidden)"
        in proc.stdout
    )


def test_show_hides_a_nested_callback_that_reads_a_secret_variable(
    tmp_path: Path, cli: Cli
) -> None:
    """A value from a secret variable anywhere inside an argument hides that whole argument."""
    path = write(
        tmp_path,
        "nested.yaml",
        "custom_callbacks:\n  - name: sample_callbacks.Evaluator\n    args:\n"
        "      judge: {name: sample_callbacks.Scorer, args: {threshold: '${CB_JUDGE_TOKEN}'}}\n"
        "      options: {rounds: 2}\n",
    )
    proc = cli("show", "--json", str(path), env={"CB_JUDGE_TOKEN": "0.123456789"})
    assert proc.returncode == 0
    assert "0.123456789" not in proc.stdout + proc.stderr
    args = json.loads(proc.stdout)["callbacks"][0]["args"]
    assert args == {"judge": "***", "options": {"rounds": 2}}
