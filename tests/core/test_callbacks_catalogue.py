"""The catalogue built-ins in the core: training_stage, metrics, reporter, progress, sync_ref_model.

Their effects under real trainers are in tests/hf and tests/lightning
(``test_*_catalogue.py``); here: building them imports no framework, their
arguments are validated, and the parts that need no trainer.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import callbridge
from callbridge.callbacks.metrics import MetricsCallback, memory_figures
from callbridge.callbacks.progress import ProgressCallback
from callbridge.callbacks.reporter import ReporterCallback

from .helpers import FRAMEWORKS, subprocess_env

CATALOGUE = ["training_stage", "metrics", "reporter", "progress", "sync_ref_model"]

# An elapsed time or ETA as progress prints it (h:mm:ss); its value is wall time, not checked.
CLOCK = r"\d+:\d\d:\d\d"


def test_building_the_catalogue_imports_no_framework_nor_rich(tmp_path: Path) -> None:
    import subprocess

    for name in [*FRAMEWORKS, "rich"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("", encoding="utf-8")
    code = (
        "import json, sys, callbridge\n"
        "cfg = {'custom_callbacks': [{'name': 'training_stage', 'args': {'stage': 'sft'}}, "
        "'metrics', 'reporter', 'progress', 'sync_ref_model']}\n"
        "built = [type(cb).__name__ for cb in callbridge.build(cfg, strict=True)]\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {(*FRAMEWORKS, 'rich')!r})\n"
        "print(json.dumps([built, heavy]))\n"
    )
    env = subprocess_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    built, heavy = json.loads(proc.stdout.splitlines()[-1])
    assert built == [
        "TrainingStageCallback",
        "MetricsCallback",
        "ReporterCallback",
        "ProgressCallback",
        "SyncRefModelCallback",
    ]
    assert heavy == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "training_stage"}, "missing required argument 'stage' (expected str)"),
        ({"name": "training_stage", "args": {"stage": " "}}, "stage must be a non-empty name"),
        ({"name": "metrics", "args": {"batch_size": 0}}, "batch_size must be >= 1 or None"),
        (
            {"name": "progress", "args": {"mode": "fancy"}},
            "args.mode: expected one of 'auto', 'rich', 'plain' (got 'fancy' that is a str)",
        ),
        ({"name": "sync_ref_model", "args": {"alpha": 1.5}}, "alpha must be between 0 and 1"),
        ({"name": "sync_ref_model", "args": {"sync_steps": 0}}, "sync_steps must be >= 1"),
    ],
)
def test_bad_arguments_are_config_errors(entry: dict[str, object], message: str) -> None:
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge.build({"custom_callbacks": [entry]}, strict=True)
    assert message in str(info.value)


def test_metrics_adds_speed_only_after_steps_and_never_overwrites() -> None:
    metrics = MetricsCallback(batch_size=8)
    run = callbridge.Run("test")
    metrics.on_train_begin(run)
    for step in (1, 2):
        metrics.on_step_begin(run)
        run.state.global_step = step
        metrics.on_step_end(run)
    logs = {"loss": 1.0, "memory_rss_mb": -1.0}
    metrics.on_log(run, logs)
    assert logs["memory_rss_mb"] == -1.0  # the trainer's own key wins
    assert logs["samples_per_second"] == pytest.approx(8 * logs["steps_per_second"])
    assert logs["step_time"] > 0
    again = {"loss": 1.0}
    metrics.on_log(run, again)  # no step since the last log: no speed figures
    assert "steps_per_second" not in again
    assert set(memory_figures()) >= {"memory_rss_mb"}


def test_reporter_needs_an_output_directory_or_an_absolute_filename(tmp_path: Path) -> None:
    run = callbridge.Run("test")
    assert ReporterCallback().path(run) is None
    target = tmp_path / "r.json"
    reporter = ReporterCallback(filename=str(target))
    reporter.on_train_begin(run)
    reporter.on_evaluate(run, {"eval_loss": 2.0, "eval_api_key": 1.0})
    reporter.on_log(run, {"tokens_per_second": 10.0, "mean_token_accuracy": 0.5})
    reporter.on_train_end(run)
    report = json.loads(target.read_text(encoding="utf-8"))
    assert report["best"]["value"] == 2.0
    assert report["final_metrics"]["eval_api_key"] == "***"  # secret-looking keys masked
    # Names that merely contain a secret word are measurements, kept as they are.
    assert report["final_metrics"]["tokens_per_second"] == 10.0
    assert report["final_metrics"]["mean_token_accuracy"] == 0.5


def test_progress_lines_without_a_known_length() -> None:
    progress = ProgressCallback()
    run = callbridge.Run("test")
    progress.on_train_begin(run)
    run.state.global_step = 3
    progress.on_log(run, {"loss": 0.5, "epoch": 1.0})
    assert re.match(
        re.escape("[progress] step 3 epoch 0.00 elapsed ") + CLOCK, progress.line(run, "step")
    )
    assert progress.line(run, "step").endswith(" loss=0.5")


def test_stage_tags_records_and_the_report_holds_the_masked_config_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from callbridge.testing import Driver
    from support.tagged_run import KEY, KEY_VAR, check_tagged_outputs, tagged_config

    monkeypatch.setenv(KEY_VAR, KEY)
    driver = Driver.from_config(
        tagged_config("sft"), output_dir=tmp_path, max_steps=4, eval_steps=2
    )
    with caplog.at_level("INFO"):
        result = driver.run()
    assert result.run.config is not None
    assert result.run.errors is result.errors
    check_tagged_outputs(tmp_path, "driver", "sft", [r.getMessage() for r in caplog.records])
    assert KEY not in caplog.text
