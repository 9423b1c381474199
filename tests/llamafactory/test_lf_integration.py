"""callbridge-lf with the real LLaMA-Factory 0.9.5: injection, defaults, built-ins, errors.

Every test trains a LoRA on a tiny Llama built in conftest (no hub), through the Python
call ``callbridge_lf.run_exp`` (in this process, so the objects can be compared) or the
command ``callbridge-lf`` (a child process).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DefaultFlowCallback, PrinterCallback, ProgressCallback

import callbridge
import callbridge_lf


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command's code in this process (the console script itself runs in test_lf_reference)."""
    from callbridge_lf._cli import main

    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_llamafactory_objects_are_injected_as_the_trainer_uses_them(
    training_yaml: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEBUG_MODE", raising=False)
    path = training_yaml(
        "strict: true\n"
        "custom_callbacks:\n"
        "  - name: my_company.callbacks.ContextProbe\n"
        '    args: {debug: "${DEBUG_MODE:-false}"}\n'
    )
    injector = callbridge_lf.run_exp(path)

    [probe] = injector.callbacks
    got = probe.injected
    trainer = got["trainer"]
    assert type(trainer).__name__ == "CustomSeq2SeqTrainer"  # LLaMA-Factory's SFT trainer
    # The very objects the trainer uses, not copies:
    assert got["training_args"] is trainer.args
    assert got["finetuning_args"] is trainer.finetuning_args
    assert got["model"] is trainer.model
    assert got["tokenizer"] is trainer.processing_class
    assert got["dataset_module"]["eval_dataset"] is trainer.eval_dataset
    # ... and the ones LLaMA-Factory built once and handed its own ReporterCallback.
    from llamafactory.train.callbacks import ReporterCallback

    [reporter] = [
        cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ReporterCallback)
    ]
    for name in ("model_args", "data_args", "finetuning_args", "generating_args"):
        assert got[name] is getattr(reporter, name), name
    # Live objects: loading the model set the compute dtype on this very model_args.
    assert got["model_args"].compute_dtype == torch.float32
    assert got["model_args"].model_name_or_path.endswith("model")
    assert type(got["generating_args"]).__name__ == "GeneratingArguments"
    # An unannotated parameter with a bool default gets a bool from "${DEBUG_MODE:-false}".
    assert probe.debug is False
    assert injector.context is not None
    assert set(injector.context) >= {"model_args", "data_args", "training_args",
                                     "finetuning_args", "generating_args"}  # fmt: skip


def test_custom_callbacks_only_drops_llamafactorys_defaults_and_keeps_flow_control(
    training_yaml: Any, tmp_path: Path
) -> None:
    path = training_yaml(
        "custom_callbacks_only: true\n"
        "custom_callbacks:\n"
        "  - name: my_company.callbacks.ContextProbe\n",
        early_stopping_steps=50,  # LLaMA-Factory's own early stopping: flow control, kept
        metric_for_best_model="eval_loss",
    )
    injector = callbridge_lf.run_exp(path)
    trainer = injector.context["trainer"]  # type: ignore[index]
    kinds = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    assert "LogCallback" not in kinds  # LLaMA-Factory's, dropped
    assert "ReporterCallback" not in kinds
    assert not any(isinstance(cb, (PrinterCallback, ProgressCallback))
                   for cb in trainer.callback_handler.callbacks)  # fmt: skip
    assert isinstance(trainer.callback_handler.callbacks[0], DefaultFlowCallback)
    assert "EarlyStoppingCallback" in kinds
    # LLaMA-Factory's LogCallback writes trainer_log.jsonl: without it, no such file.
    assert not (tmp_path / "out" / "trainer_log.jsonl").exists()
    assert trainer.state.global_step == 6


def test_pissa_convert_is_llamafactorys_own_callback(training_yaml: Any, tmp_path: Path) -> None:
    path = training_yaml(
        "strict: true\ncustom_callbacks:\n  - pissa_convert\n",
        pissa_init="true",
        pissa_iter=2,
        save_strategy="steps",
        save_steps=1000,
    )
    injector = callbridge_lf.run_exp(path)
    [callback] = injector.callbacks
    from llamafactory.train.callbacks import PissaConvertCallback

    assert type(callback) is PissaConvertCallback
    out = tmp_path / "out"
    for folder in ("pissa_init", "pissa_converted", "pissa_backup"):
        assert (out / folder / "adapter_model.safetensors").is_file(), folder
    converted = json.loads((out / "pissa_converted" / "adapter_config.json").read_text())
    initial = json.loads((out / "pissa_init" / "adapter_config.json").read_text())
    # PEFT converts a PiSSA adapter into a plain LoRA of twice the rank.
    assert (initial["r"], converted["r"]) == (4, 8)


def test_evaluation_and_prediction_use_llamafactorys_generation_settings(
    training_yaml: Any, tmp_path: Path
) -> None:
    path = training_yaml(
        "strict: true\n"
        "custom_callbacks:\n"
        "  - name: evaluation\n"
        "    args: {num_samples: 2}\n"
        "  - name: prediction\n"
        "    args: {max_samples: 5}\n"
        "  - name: log\n"
        "    args: {jsonl: events.jsonl}\n",
        do_sample="false",  # LLaMA-Factory's generating_args, injected into both
        max_new_tokens=3,
    )
    callbridge_lf.run_exp(path)
    out = tmp_path / "out"
    generations = read_jsonl(out / "generations.jsonl")
    # Evaluations during training (steps 3 and 6) and LLaMA-Factory's after it (do_eval).
    assert [g["step"] for g in generations] == [3, 6, 6]
    for record in generations:
        assert len(record["samples"]) == 2
        assert all(s["prompt"].startswith("Human: count from") for s in record["samples"])
        assert all(s["reference"] for s in record["samples"])
        assert 0 < record["metrics"]["eval_gen_tokens"] <= 3  # max_new_tokens from the YAML
        assert "eval_loss" in record["metrics"]
    predictions = read_jsonl(out / "predictions.jsonl")
    assert len(predictions) == 5
    assert all(set(p) == {"prompt", "predict", "label"} for p in predictions)
    # log saw the evaluation metrics, the generation's included, even after train end.
    evaluated = [e for e in read_jsonl(out / "events.jsonl") if e["event"] == "evaluate"]
    assert len(evaluated) == 3
    assert all("eval_gen_exact_match" in e for e in evaluated)


def test_early_stopping_stops_llamafactorys_training(training_yaml: Any, tmp_path: Path) -> None:
    path = training_yaml(
        "strict: true\n"
        "custom_callbacks:\n"
        "  - name: early_stopping\n"
        "    args: {early_stopping_patience: 1, metric: eval_loss, early_stopping_threshold: 10}\n"
        "  - name: reporter\n",
        max_steps=12,
        eval_steps=1,
        logging_steps=1,
    )
    injector = callbridge_lf.run_exp(path)
    trainer = injector.context["trainer"]  # type: ignore[index]
    # Evaluations at steps 1 and 2; no improvement of 10 at step 2 ends training there.
    assert trainer.state.global_step == 2
    report = json.loads((tmp_path / "out" / "callbridge_report.json").read_text())
    assert (report["status"], report["global_step"]) == ("stopped", 2)


def test_failures_are_isolated_and_llamafactorys_defaults_stay(
    training_yaml: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising native callback is isolated and counted; a callback that fails to load is
    skipped (not strict), as the reference promises; LLaMA-Factory's defaults stay."""
    caplog.set_level(logging.INFO, logger="callbridge")
    path = training_yaml(
        "custom_callbacks:\n"
        "  - early_stoping\n"  # a typo: not strict, so skipped with an error
        "  - my_company.callbacks.FlakyCallback\n"
        "  - name: reporter\n"
    )
    injector = callbridge_lf.run_exp(path)
    flaky, _ = injector.callbacks
    assert type(flaky).__name__ == "FlakyCallback"
    trainer = injector.context["trainer"]  # type: ignore[index]
    assert trainer.state.global_step == 6
    label = "my_company.callbacks.FlakyCallback (custom_callbacks[1])"
    report = json.loads((tmp_path / "out" / "callbridge_report.json").read_text())
    [count] = report["callback_errors"]["counts"]
    assert (count["callback"], count["hook"]) == (label, "on_log")
    # Every call failed, and each is counted: LLaMA-Factory's evaluation after training
    # logs once more, and the report is written again for that evaluation.
    assert count["count"] == flaky.calls > 0
    logged = [r for r in caplog.records if r.name == "callbridge" and "raised in" in r.msg]
    assert len(logged) == 1
    assert isinstance(logged[0].exc_info[1], ConnectionError)  # type: ignore[index]
    skipped = [r.getMessage() for r in caplog.records if "skipped callback" in r.msg]
    assert len(skipped) == 1
    assert "unknown callback 'early_stoping'" in skipped[0]
    # Without custom_callbacks_only, LLaMA-Factory's own callbacks stay and do their work.
    kinds = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    assert {"LogCallback", "ReporterCallback"} <= set(kinds)
    assert (tmp_path / "out" / "trainer_log.jsonl").is_file()


def test_typos_in_both_readers_keys_are_reported_before_anything_loads(
    training_yaml: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = training_yaml(
        "strict: true\ncustom_callbacks_onlly: true\ncustom_callbacks:\n  - name: early_stoping\n",
        lerning_rate="1.0e-3",
    )
    status, _, err = run_main(capsys, "train", str(path))
    assert status == 1
    lines = err.strip().splitlines()
    assert lines[0] == "callbridge-lf: 3 problems, nothing was trained:"
    assert lines[1].startswith(
        f"  {path}: lerning_rate: unknown key 'lerning_rate': neither a LLaMA-Factory argument "
        "nor a callbridge key. Did you mean 'learning_rate'?"
    )
    assert lines[2].startswith(
        f"  {path}: custom_callbacks_onlly: unknown key 'custom_callbacks_onlly': neither a "
        "LLaMA-Factory argument nor a callbridge key. Did you mean 'custom_callbacks_only'?"
    )
    assert lines[3].startswith(
        f"  {path}: custom_callbacks[0]: unknown callback 'early_stoping'. Did you mean "
        "'early_stopping'?"
    )
    assert not (tmp_path / "out").exists()  # nothing was loaded, nothing written
    # The Python call raises the same problems, before LLaMA-Factory reads anything.
    with pytest.raises(callbridge.ConfigError) as info:
        callbridge_lf.run_exp(path)
    assert [p.key_path for p in info.value.problems] == [
        "lerning_rate",
        "custom_callbacks_onlly",
        "custom_callbacks[0]",
    ]


def test_check_validates_without_training(
    training_yaml: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = training_yaml("custom_callbacks: [log, pissa_convert]\n")
    status, out, err = run_main(capsys, "check", str(good))
    assert status == 0, err
    assert out.strip().splitlines()[-1] == f"{good}: ok (2 callbacks)"
    # LLaMA-Factory's own checks run too: do_predict in SFT needs predict_with_generate.
    bad = training_yaml("custom_callbacks: [log]\n", name="bad.yaml")
    status, _, err = run_main(capsys, "check", str(bad), "do_predict=true")
    assert status == 1
    assert err.strip().splitlines()[1] == (
        f"  {bad}: LLaMA-Factory refuses the arguments: Please enable `predict_with_generate` "
        "to save model predictions."
    )
    assert not (tmp_path / "out").exists()
