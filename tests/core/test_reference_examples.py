"""The LLaMA-Factory reference document's YAML examples build with their documented meaning.

The files in tests/fixtures/reference/ are the document's examples verbatim; the company
callbacks they name are small neutral stand-ins in tests/fixtures/plugins/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import callbridge
from callbridge.testing import Driver

from .helpers import FIXTURES

REFERENCE = FIXTURES / "reference"

ENV_NAMES = (
    "API_KEY",
    "COMPANY_API_KEY",
    "SLACK_WEBHOOK_URL",
    "DEBUG_MODE",
    "UPLOAD_URL",
    "PRODUCTION_MODE",
    "DEV_MODE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def names(callbacks: list[object]) -> list[str]:
    return [type(cb).__name__ for cb in callbacks]


def test_simple_names_build_the_builtins_with_their_defaults() -> None:
    from callbridge.callbacks.early_stopping import EarlyStoppingCallback
    from callbridge.callbacks.log import LogCallback

    config = callbridge.load(REFERENCE / "simple.yaml")
    assert config.custom_callbacks_only is False
    assert callbridge.build(config, strict=True) == [LogCallback(), EarlyStoppingCallback()]


def test_basic_format_mixes_names_arguments_and_an_external_callback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_KEY", "ref-api-key-1")
    log, es, stage, monitor = callbridge.build(REFERENCE / "advanced.yaml", strict=True)
    assert names([log, es]) == ["LogCallback", "EarlyStoppingCallback"]
    assert stage.stage == "sft"
    assert type(monitor).__name__ == "UploadMonitor"  # from the factory function of that name
    assert (monitor.upload_url, monitor.api_key) == (
        "https://your-platform.com/api",
        "ref-api-key-1",
    )


def test_basic_format_without_its_variable_names_it() -> None:
    path = REFERENCE / "advanced.yaml"
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build(path, strict=True)
    assert str(info.value) == (
        f"{path}: custom_callbacks[3].args.api_key: environment variable 'API_KEY' is not set; "
        "set it, or give a default with ${API_KEY:-default}"
    )


def test_basic_format_not_strict_still_trains_with_the_rest() -> None:
    """The reference's promise: a callback that fails to load does not stop training."""
    built = callbridge.build(REFERENCE / "advanced.yaml")
    assert names(built) == ["LogCallback", "EarlyStoppingCallback", "TrainingStageCallback"]


def test_company_monitoring_arguments_keep_their_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPANY_API_KEY", "company-key")
    [monitor] = callbridge.build(REFERENCE / "company_monitoring.yaml", strict=True)
    assert (monitor.upload_url, monitor.api_key, monitor.project_name, monitor.upload_interval) == (
        "https://company-monitor.internal/api/metrics",
        "company-key",
        "llama-sft-experiment",
        50,
    )
    result = Driver([monitor], max_steps=100, logging_steps=10).run()
    assert monitor.uploaded == [result.logged[4], result.logged[9]]  # steps 50 and 100


def test_slack_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.example/T000")
    [slack] = callbridge.build(REFERENCE / "slack.yaml", strict=True)
    assert (
        slack.webhook_url,
        slack.notify_on_start,
        slack.notify_on_complete,
        slack.notify_interval,
    ) == (
        "https://hooks.example/T000",
        True,
        True,
        100,
    )


def test_enhanced_logging_example() -> None:
    [extra] = callbridge.build(REFERENCE / "enhanced_logging.yaml", strict=True)
    assert (extra.log_level, extra.log_file, extra.include_memory_usage) == (
        "debug",
        Path("detailed_training.log"),
        True,
    )


def test_mixed_builtin_and_custom_callbacks_run_together() -> None:
    log, es, monitor, alert = callbridge.build(REFERENCE / "mixed.yaml", strict=True)
    assert names([log, es, monitor, alert]) == [
        "LogCallback",
        "EarlyStoppingCallback",
        "MonitorCallback",
        "AlertCallback",
    ]
    assert es.early_stopping_patience == 3
    assert monitor.interval == 10  # named alone: every default applies
    assert alert.alert_threshold == 0.5
    Driver([log, es, monitor, alert], max_steps=4, loss=lambda step: 1.0 / step).run()
    assert alert.alerts == [1.0]  # only step 1's loss exceeds 0.5


def test_environment_variables_required_and_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    path = REFERENCE / "environment.yaml"
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build(path, strict=True)
    assert info.value.key_path == "custom_callbacks[0].args.api_key"
    assert "'COMPANY_API_KEY'" in info.value.message

    monkeypatch.setenv("COMPANY_API_KEY", "k")
    [monitor] = callbridge.build(path, strict=True)
    assert (monitor.debug, monitor.upload_url) == (False, "https://default.com")

    monkeypatch.setenv("DEBUG_MODE", "true")
    monkeypatch.setenv("UPLOAD_URL", "https://metrics.internal")
    [monitor] = callbridge.build(path, strict=True)
    assert (monitor.debug, monitor.upload_url) == (True, "https://metrics.internal")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"PRODUCTION_MODE": "true"}, ["production_monitor"]),
        ({"DEV_MODE": "1"}, ["detailed_profiler"]),
        ({"PRODUCTION_MODE": "On", "DEV_MODE": "YES"}, ["production_monitor", "detailed_profiler"]),
    ],
)
def test_conditional_callbacks_follow_their_variables(
    env: dict[str, str], expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert names(callbridge.build(REFERENCE / "conditional.yaml", strict=True)) == expected


def test_auto_import_by_module_path() -> None:
    [cb] = callbridge.build(REFERENCE / "auto_import.yaml", strict=True)
    assert (type(cb).__name__, cb.upload_url, cb.api_key) == (
        "MyCompanyCallback",
        "https://my-platform.com",
        None,
    )


def test_manual_registration_then_use_in_yaml() -> None:
    from my_company.callbacks import MyCompanyCallback

    path = REFERENCE / "manual_registration.yaml"
    assert callbridge.check(path)[0].message.startswith("unknown callback 'my_company.monitor'")
    callbridge.register("my_company.monitor", MyCompanyCallback)
    [cb] = callbridge.build(path, strict=True)
    assert isinstance(cb, MyCompanyCallback)


@pytest.mark.parametrize(
    "name",
    [
        "simple.yaml",
        "company_monitoring.yaml",
        "slack.yaml",
        "enhanced_logging.yaml",
        "mixed.yaml",
        "environment.yaml",
        "conditional.yaml",
        "auto_import.yaml",
    ],
)
def test_callbridge_check_accepts_the_reference_examples(name: str, cli: object) -> None:
    env = {"COMPANY_API_KEY": "k", "SLACK_WEBHOOK_URL": "https://hooks.example/x"}
    proc = cli("check", str(REFERENCE / name), env=env)  # type: ignore[operator]
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{REFERENCE / name}: ok (")
