"""The catalogue's built-ins under a real Lightning ``Trainer``, each by its effect.

``training_stage``, ``metrics``, ``reporter``, ``progress`` and ``sync_ref_model``
declared by name in a config, on ``BoringModel``: 4 steps per epoch, validation at
the end of each epoch.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import callbridge_lightning
from support.bema_spies import trainable
from support.lightning_models import FEATURES, BoringModel, TrainingFailed, loader, trainer

SPY = {"name": "support.neutral_spies.PayloadSpy"}

# An elapsed time or ETA as progress prints it (h:mm:ss); its value is wall time, not checked.
CLOCK = r"\d+:\d\d:\d\d"


def config(*entries: Any) -> dict[str, Any]:
    return {"strict": True, "callback_errors": "raise", "custom_callbacks": list(entries)}


def fit(root: Path, cfg: dict[str, Any], *, model: Any = None, max_steps: int = 8,
        validate: bool = True, inject: dict[str, Any] | None = None) -> list[Any]:  # fmt: skip
    """Fit ``model`` (a BoringModel by default); return the neutral callbacks in order."""
    callbacks = callbridge_lightning.callbacks(cfg, inject=inject)
    tr = trainer(root, callbacks, max_steps=max_steps, max_epochs=-1, log_every_n_steps=2,
                 limit_val_batches=None if validate else 0)  # fmt: skip
    tr.fit(BoringModel() if model is None else model, loader(4), loader(2, seed=1))
    return callbridge_lightning.unwrap(callbacks)


# -- training_stage ------------------------------------------------------------------------------


def test_training_stage_logs_begin_and_end_and_writes_stage_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="callbridge"):
        [stage] = fit(tmp_path, config({"name": "training_stage", "args": {"stage": "pretrain"}}))
    lines = [r.getMessage() for r in caplog.records if "stage pretrain" in r.getMessage()]
    assert lines == [
        "callbridge: stage pretrain begins (lightning, step 0/8)",
        "callbridge: stage pretrain ends at step 8",
    ]
    record = json.loads((tmp_path / "stage.json").read_text(encoding="utf-8"))
    assert {k: record[k] for k in ("stage", "status", "framework", "global_step", "max_steps")} == {
        "stage": "pretrain", "status": "finished", "framework": "lightning",
        "global_step": 8, "max_steps": 8,
    }  # fmt: skip
    assert stage.stage == "pretrain"


def test_training_stage_records_a_failure(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed):
        fit(tmp_path, config({"name": "training_stage", "args": {"stage": "sft"}}),
            model=BoringModel(fail_at_step=3))  # fmt: skip
    record = json.loads((tmp_path / "stage.json").read_text(encoding="utf-8"))
    assert (record["status"], record["global_step"], record["error"]) == (
        "failed", 2, "TrainingFailed: training_step failed at step 3",
    )  # fmt: skip


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_adds_speed_and_memory_to_the_logs_later_callbacks_see(tmp_path: Path) -> None:
    cfg = config({"name": "metrics", "args": {"batch_size": 4, "tokens_per_step": 32}}, SPY)
    _, spy = fit(tmp_path, cfg)
    train_logs = [logs for _, logs in spy.logs if "loss" in logs]
    assert len(train_logs) == 4
    for logs in train_logs:
        for key in ("step_time", "steps_per_second", "samples_per_second",
                    "tokens_per_second", "memory_rss_mb"):  # fmt: skip
            assert 0 < logs[key] < math.inf, (key, logs)  # positive and finite (not nan)
        assert logs["samples_per_second"] == pytest.approx(4 * logs["steps_per_second"])
        assert logs["tokens_per_second"] == pytest.approx(32 * logs["steps_per_second"])
    val_logs = [logs for _, logs in spy.logs if "val_loss" in logs]
    assert len(val_logs) == 2
    assert all("steps_per_second" not in logs and "memory_rss_mb" in logs for logs in val_logs)


def test_metrics_without_a_batch_size_reports_no_samples(tmp_path: Path) -> None:
    _, spy = fit(tmp_path, config("metrics", SPY), validate=False)
    train_logs = [logs for _, logs in spy.logs if "loss" in logs]
    assert train_logs
    assert all("steps_per_second" in logs for logs in train_logs)
    assert not any("samples_per_second" in logs or "tokens_per_second" in logs
                   for logs in train_logs)  # fmt: skip


# -- reporter ------------------------------------------------------------------------------------


def test_reporter_writes_steps_final_and_best_metrics(tmp_path: Path) -> None:
    cfg = config({"name": "training_stage", "args": {"stage": "sft"}},
                 {"name": "reporter", "args": {"metric": "loss"}}, SPY)  # fmt: skip
    _, _, spy = fit(tmp_path, cfg, max_steps=12)
    report = json.loads((tmp_path / "callbridge_report.json").read_text(encoding="utf-8"))
    val_losses = [(step, m["val_loss"]) for step, m in spy.evaluations]
    best_step, best = min(val_losses, key=lambda item: item[1])
    assert report["best"] == {"metric": "loss", "mode": "min", "value": best, "step": best_step}
    assert report["final_metrics"]["val_loss"] == val_losses[-1][1]
    assert report["final_metrics"]["loss"] == [m for _, m in spy.logs if "loss" in m][-1]["loss"]
    assert {k: report[k] for k in ("status", "framework", "stage", "global_step", "max_steps",
                                   "steps_this_run", "evaluations", "world_size")} == {
        "status": "completed", "framework": "lightning", "stage": "sft", "global_step": 12,
        "max_steps": 12, "steps_this_run": 12, "evaluations": 3, "world_size": 1,
    }  # fmt: skip
    assert report["wall_time_s"] > 0


def test_reporter_says_a_run_stopped_early(tmp_path: Path) -> None:
    cfg = config("reporter", {"name": "support.recorder.Recorder", "args": {"stop_at": 3}})
    fit(tmp_path, cfg)
    report = json.loads((tmp_path / "callbridge_report.json").read_text(encoding="utf-8"))
    assert (report["status"], report["global_step"]) == ("stopped", 3)


def test_reporter_says_a_run_failed_and_why(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed):
        fit(tmp_path, config("reporter"), model=BoringModel(fail_at_step=3))
    report = json.loads((tmp_path / "callbridge_report.json").read_text(encoding="utf-8"))
    assert (report["status"], report["global_step"], report["error"]) == (
        "failed", 2, "TrainingFailed: training_step failed at step 3",
    )  # fmt: skip


# -- progress ------------------------------------------------------------------------------------


def test_progress_prints_plain_lines_when_stdout_is_no_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fit(tmp_path, config("progress"), max_steps=4, validate=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[progress]")]
    assert len(lines) == 4  # begin, two logs, done
    assert re.match(re.escape("[progress] step 0/4 (0%) epoch 0.00 elapsed ") + CLOCK, lines[0])
    # epoch: fractional epochs completed (2 of 4 batches), as under HF.
    assert re.match(re.escape("[progress] step 2/4 (50%) epoch 0.50 elapsed ") + CLOCK, lines[1])
    assert re.search(" eta " + CLOCK, lines[1])
    assert " loss=" in lines[1]
    assert re.match(re.escape("[progress] done: step 4 in ") + CLOCK, lines[-1])


# -- sync_ref_model ------------------------------------------------------------------------------

SYNC, ALPHA = 3, 0.6


class WithReference(BoringModel):
    """A policy with its frozen reference model as an attribute (a DPO-style module)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.ref_model = torch.nn.Linear(FEATURES, 1).requires_grad_(False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.layer.parameters(), lr=self.lr)


@pytest.mark.parametrize("how", ["module_attribute", "inject"])
def test_sync_ref_model_mixes_the_policy_into_the_reference_as_trl_does(
    tmp_path: Path, how: str
) -> None:
    model = WithReference()
    ref = model.ref_model
    if how == "inject":
        del model.ref_model  # a reference model the module does not hold
    ref0 = {name: p.detach().clone() for name, p in ref.named_parameters()}
    cfg = config(
        {"name": "support.bema_spies.WeightSpy", "args": {"trajectory": True}},
        {"name": "sync_ref_model", "args": {"sync_steps": SYNC, "alpha": ALPHA}},
    )
    spy, sync = fit(tmp_path, cfg, model=model, max_steps=7,
                    inject={"ref_model": ref} if how == "inject" else None)  # fmt: skip
    expected = {name: t.clone() for name, t in ref0.items()}
    for step in (3, 6):
        for name, target in expected.items():
            target.mul_(1.0 - ALPHA).add_(spy.steps[step][f"layer.{name}"], alpha=ALPHA)
    assert sync.syncs == 2
    for name, param in ref.named_parameters():
        assert torch.equal(param.detach(), expected[name]), name
    assert not torch.equal(ref.weight.detach(), ref0["weight"])  # it moved
    assert trainable(model).keys() == {"layer.weight", "layer.bias"}


def test_progress_draws_a_rich_bar_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rich", reason="rich is optional")
    [progress] = fit(tmp_path, config({"name": "progress", "args": {"mode": "rich"}}),
                     max_steps=4, validate=False)  # fmt: skip
    out = capsys.readouterr().out
    assert "train" in out
    assert "4/4" in out
    assert "[progress] step" not in out  # no plain lines while the bar runs
    assert re.match(re.escape("[progress] done: step 4 in ") + CLOCK, out.rstrip().splitlines()[-1])
    assert set(progress.latest) >= {"loss"}


# -- run tags, resolved config and error summary -------------------------------------------------


def test_stage_tags_records_and_the_report_holds_the_masked_config_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from support.tagged_run import KEY, KEY_VAR, check_tagged_outputs, tagged_config

    monkeypatch.setenv(KEY_VAR, KEY)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, tagged_config("pretrain"))
    check_tagged_outputs(
        tmp_path, "lightning", "pretrain", [r.getMessage() for r in caplog.records]
    )
    assert KEY not in caplog.text


def test_metrics_figures_reach_the_trainers_loggers(tmp_path: Path) -> None:
    """A real ``CSVLogger`` writes what ``metrics`` adds, beside what the module logged."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=tmp_path, name="csv", version=0)
    callbacks = callbridge_lightning.callbacks(
        config({"name": "metrics", "args": {"batch_size": 4}})
    )
    tr = trainer(tmp_path, callbacks, max_steps=8, max_epochs=-1, log_every_n_steps=2,
                 logger=logger)  # fmt: skip
    tr.fit(BoringModel(), loader(4), loader(2, seed=1))
    with open(Path(logger.log_dir) / "metrics.csv", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    train_rows = [r for r in rows if r.get("loss")]
    assert len(train_rows) == 4
    for row in train_rows:
        assert float(row["step_time"]) > 0
        assert float(row["samples_per_second"]) == pytest.approx(4 * float(row["steps_per_second"]))
        assert float(row["memory_rss_mb"]) > 0
    assert [r["step"] for r in train_rows] == ["1", "3", "5", "7"]  # Lightning's own step column
