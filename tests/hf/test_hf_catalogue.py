"""The catalogue's built-ins under a real ``transformers.Trainer``, each by its effect.

``training_stage``, ``metrics``, ``reporter``, ``progress`` and ``sync_ref_model``
declared by name in a config, on the tiny GPT-2 of ``support.hf_models``.
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
from transformers import TrainerCallback

import callbridge_hf
from support.bema_spies import trainable
from support.hf_models import make_trainer, neutral_callbacks, tiny_gpt2, with_config

SPY = {"name": "support.neutral_spies.PayloadSpy"}

# An elapsed time or ETA as progress prints it (h:mm:ss); its value is wall time, not checked.
CLOCK = r"\d+:\d\d:\d\d"


def config(*entries: Any) -> dict[str, Any]:
    return {"strict": True, "callback_errors": "raise", "custom_callbacks": list(entries)}


# -- training_stage ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["callbacks", "attach"])
def test_training_stage_logs_begin_and_end_and_writes_stage_json(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config({"name": "training_stage", "args": {"stage": "sft"}})
    trainer = with_config(mode, tmp_path, cfg, max_steps=3)
    with caplog.at_level(logging.INFO, logger="callbridge"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if "stage sft" in r.getMessage()]
    assert lines == [
        "callbridge: stage sft begins (hf, step 0/3)",
        "callbridge: stage sft ends at step 3",
    ]
    record = json.loads((tmp_path / "stage.json").read_text(encoding="utf-8"))
    assert {k: record[k] for k in ("stage", "status", "framework", "global_step", "max_steps")} == {
        "stage": "sft", "status": "finished", "framework": "hf", "global_step": 3, "max_steps": 3,
    }  # fmt: skip
    assert record["ended_at"] >= record["started_at"]
    assert neutral_callbacks(trainer)[0].stage == "sft"


# -- metrics -------------------------------------------------------------------------------------


class NativeLogSpy(TrainerCallback):
    """A native callback after the neutral ones: where HF's reporting integrations sit."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.logs.append(dict(logs or {}))


def test_metrics_adds_speed_and_memory_to_the_logs_later_callbacks_see(tmp_path: Path) -> None:
    native = NativeLogSpy()
    trainer = callbridge_hf.attach(
        make_trainer(
            tmp_path, max_steps=6, logging_steps=2, gradient_accumulation_steps=2,
            eval_strategy="steps", eval_steps=3,
        ),
        config("metrics", SPY),
    )  # fmt: skip
    trainer.add_callback(native)
    trainer.train()
    spy = neutral_callbacks(trainer)[1]
    train_logs = [logs for _, logs in spy.logs if "loss" in logs]
    assert len(train_logs) == 3
    for logs in train_logs:
        for key in ("step_time", "steps_per_second", "samples_per_second", "memory_rss_mb"):
            assert 0 < logs[key] < math.inf, (key, logs)  # positive and finite (not nan)
        # 2 per device x 1 process x 2 accumulation = 4 samples per optimizer step.
        assert logs["samples_per_second"] == pytest.approx(4 * logs["steps_per_second"])
        assert "tokens_per_second" not in logs  # HF counts no tokens unless asked
    eval_logs = [logs for _, logs in spy.logs if "eval_loss" in logs]
    assert eval_logs
    assert all("steps_per_second" not in logs for logs in eval_logs)
    assert all("memory_rss_mb" in logs for logs in eval_logs)
    # The native callback after it (a reporting integration's place) got the same figures.
    assert [logs for logs in native.logs if "loss" in logs] == train_logs


def test_metrics_uses_hfs_token_count_when_the_trainer_keeps_one(tmp_path: Path) -> None:
    trainer = callbridge_hf.attach(
        make_trainer(tmp_path, max_steps=4, logging_steps=2, include_num_input_tokens_seen=True),
        config({"name": "metrics", "args": {"memory": False}}, SPY),
    )
    trainer.train()
    train_logs = [logs for _, logs in neutral_callbacks(trainer)[1].logs if "loss" in logs]
    for logs in train_logs:
        # 2 sequences of 8 tokens per step.
        assert logs["tokens_per_second"] == pytest.approx(16 * logs["steps_per_second"])
        assert "memory_rss_mb" not in logs


# -- reporter ------------------------------------------------------------------------------------


def test_reporter_writes_steps_final_and_best_metrics(tmp_path: Path) -> None:
    trainer = callbridge_hf.attach(
        make_trainer(tmp_path, max_steps=6, logging_steps=2, eval_strategy="steps", eval_steps=2),
        config({"name": "training_stage", "args": {"stage": "dpo"}}, "reporter", SPY),
    )
    trainer.train()
    report = json.loads((tmp_path / "callbridge_report.json").read_text(encoding="utf-8"))
    spy = neutral_callbacks(trainer)[2]
    eval_losses = [(step, m["eval_loss"]) for step, m in spy.evaluations]
    best_step, best = min(eval_losses, key=lambda item: item[1])
    assert report["best"] == {
        "metric": "eval_loss",
        "mode": "min",
        "value": best,
        "step": best_step,
    }
    assert report["final_metrics"]["eval_loss"] == eval_losses[-1][1]
    assert report["final_metrics"]["loss"] == [m for _, m in spy.logs if "loss" in m][-1]["loss"]
    assert {k: report[k] for k in ("status", "framework", "stage", "global_step", "max_steps",
                                   "steps_this_run", "evaluations", "world_size")} == {
        "status": "completed", "framework": "hf", "stage": "dpo", "global_step": 6,
        "max_steps": 6, "steps_this_run": 6, "evaluations": 3, "world_size": 1,
    }  # fmt: skip
    assert report["wall_time_s"] > 0
    assert "error" not in report


def test_reporter_says_a_run_failed_and_why(tmp_path: Path) -> None:
    class Boom(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                raise RuntimeError("out of patience")

    trainer = callbridge_hf.attach(make_trainer(tmp_path, max_steps=5), config("reporter"))
    trainer.add_callback(Boom())
    with pytest.raises(RuntimeError, match="out of patience"):
        trainer.train()
    report = json.loads((tmp_path / "callbridge_report.json").read_text(encoding="utf-8"))
    assert (report["status"], report["global_step"], report["error"]) == (
        "failed", 2, "RuntimeError: out of patience",
    )  # fmt: skip


# -- progress ------------------------------------------------------------------------------------


def test_progress_prints_plain_lines_when_stdout_is_no_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = callbridge_hf.attach(
        make_trainer(tmp_path, max_steps=4, logging_steps=2),
        {"custom_callbacks_only": True, "custom_callbacks": ["progress"]},
    )
    trainer.train()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[progress]")]
    assert len(lines) == 5  # begin, two logs, the summary log, done
    assert re.match(re.escape("[progress] step 0/4 (0%) epoch 0.00 elapsed ") + CLOCK, lines[0])
    assert lines[1].startswith("[progress] step 2/4 (50%) epoch ")
    assert re.search(" eta " + CLOCK, lines[1])
    assert " loss=" in lines[1]
    assert re.match(re.escape("[progress] done: step 4 in ") + CLOCK, lines[-1])


# -- sync_ref_model ------------------------------------------------------------------------------

SYNC, ALPHA = 3, 0.6


@pytest.mark.parametrize("how", ["trainer_attribute", "inject"])
def test_sync_ref_model_mixes_the_policy_into_the_reference_as_trl_does(
    tmp_path: Path, how: str
) -> None:
    ref = tiny_gpt2(seed=1)
    ref0 = trainable(ref)
    trainer = make_trainer(tmp_path, max_steps=7)
    cfg = config(
        {"name": "support.bema_spies.WeightSpy", "args": {"trajectory": True}},
        {"name": "sync_ref_model", "args": {"sync_steps": SYNC, "alpha": ALPHA}},
    )
    if how == "trainer_attribute":
        trainer.ref_model = ref  # what TRL's DPOTrainer holds; attach injects it
        callbridge_hf.attach(trainer, cfg)
    else:
        callbridge_hf.attach(trainer, cfg, inject={"ref_model": ref})
    trainer.train()
    spy, sync = neutral_callbacks(trainer)
    expected = {name: t.clone() for name, t in ref0.items()}
    for step in (3, 6):
        for name, target in expected.items():
            target.mul_(1.0 - ALPHA).add_(spy.steps[step][name], alpha=ALPHA)
    got = trainable(ref)
    assert sync.syncs == 2
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert not torch.equal(
        got["transformer.wte.weight"], ref0["transformer.wte.weight"]
    )  # it moved


def test_sync_ref_model_equals_trls_callback_bit_for_bit(tmp_path: Path) -> None:
    """TRL's SyncRefModelCallback in one run, ours from a config in another: same reference."""
    trl = pytest.importorskip("trl")
    theirs_ref, ours_ref = tiny_gpt2(seed=1), tiny_gpt2(seed=1)
    theirs = make_trainer(tmp_path / "trl", max_steps=7)
    # TRL reads its cadence from DPOConfig's fields; a plain TrainingArguments gets them here.
    theirs.args.ref_model_sync_steps, theirs.args.ref_model_mixup_alpha = SYNC, ALPHA
    theirs.add_callback(trl.SyncRefModelCallback(ref_model=theirs_ref, accelerator=None))
    theirs.train()
    ours = callbridge_hf.attach(
        make_trainer(tmp_path / "ours", max_steps=7),
        config({"name": "sync_ref_model", "args": {"sync_steps": SYNC, "alpha": ALPHA}}),
        inject={"ref_model": ours_ref},
    )
    ours.train()
    expected, got = trainable(theirs_ref), trainable(ours_ref)
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert not torch.equal(
        got["transformer.wte.weight"], trainable(tiny_gpt2(seed=1))["transformer.wte.weight"]
    )


# -- run tags, resolved config and error summary -------------------------------------------------


def test_stage_tags_records_and_the_report_holds_the_masked_config_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from support.tagged_run import KEY, KEY_VAR, check_tagged_outputs, tagged_config

    monkeypatch.setenv(KEY_VAR, KEY)
    trainer = callbridge_hf.attach(
        make_trainer(tmp_path, max_steps=4, logging_steps=2, eval_strategy="steps", eval_steps=2),
        tagged_config("sft"),
    )
    with caplog.at_level(logging.INFO):
        trainer.train()
    check_tagged_outputs(tmp_path, "hf", "sft", [r.getMessage() for r in caplog.records])
    assert KEY not in caplog.text


# -- metrics reach the trainer's reporting integrations ------------------------------------------


def neutral(callback: Any) -> bool:
    return isinstance(callback, callbridge_hf.NeutralCallback)


def tensorboard_scalars(root: Path) -> dict[str, list[float]]:
    """Every scalar TensorBoard event under ``root``, by tag (TFRecord framing read by hand)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[float]] = {}
    for path in sorted(root.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


def test_attach_puts_its_callbacks_before_report_to_integrations_so_they_log_metrics_figures(
    tmp_path: Path,
) -> None:
    """A real TensorBoard integration (tensorboardX) logs what ``metrics`` adds."""
    pytest.importorskip("tensorboardX", reason="the hf suite installs tensorboardX")
    trainer = make_trainer(tmp_path, max_steps=4, logging_steps=2, report_to=["tensorboard"])
    callbridge_hf.attach(trainer, config({"name": "metrics", "args": {"batch_size": 8}}))
    kinds = [
        "tb" if type(cb).__name__ == "TensorBoardCallback" else "ours" if neutral(cb) else "-"
        for cb in trainer.callback_handler.callbacks
    ]
    assert kinds.index("ours") < kinds.index("tb")
    trainer.train()
    scalars = tensorboard_scalars(tmp_path)
    assert len(scalars["train/loss"]) == 2
    assert len(scalars["train/step_time"]) == 2
    assert all(v > 0 for v in scalars["train/samples_per_second"])
    assert "train/memory_rss_mb" in scalars
