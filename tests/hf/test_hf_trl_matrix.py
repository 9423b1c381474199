"""Every TRL callback, declared in one LLaMA-Factory-style YAML, attached by ``callbridge_hf``.

Each callback either runs for real on a tiny TRL trainer (offline: tiny GPT-2 object,
in-code tokenizer, in-code datasets) or fails with the hint a user needs. What this
environment has (TRL 1.16, no wandb, comet_ml, weave, mergekit or llm-blender):

* ``trl.BEMACallback``: runs, writes ``output_dir/bema``.
* ``trl.RichProgressCallback``: runs.
* ``trl.SyncRefModelCallback``: runs under ``DPOTrainer`` (``ref_model`` and
  ``accelerator`` injected); under ``SFTTrainer`` (no ``ref_model``) a ``ConfigError``.
* ``trl.LogCompletionsCallback``: runs with neither wandb nor comet_ml: it generates the
  completions into its table and logs them nowhere (``report_to=[]``), no error.
* ``trl.WinRateCallback``: not in TRL 1.16 (removed with TRL's judges): unknown name.
* ``MergeModelCallback`` (``trl.experimental.merge_model_callback``): TRL's own
  ImportError, naming ``pip install mergekit``, inside callbridge's ``ConfigError``.
* ``trl.WeaveCallback``: builds and runs; without weave TRL logs a warning naming
  ``pip install weave`` and the callback does nothing.
"""

from __future__ import annotations

import importlib.util
import io
import logging
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, Trainer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

import callbridge
import callbridge_hf
from callbridge._cli import main as cli_main
from support.hf_models import sentences, text_dataset, tiny_gpt2, tiny_tokenizer

pytestmark = [
    # TRL 1.16 asks the model whether activation checkpointing is on through a name
    # transformers 5 deprecates: in DPOTrainer's reference-model pass
    # (trl.models.utils.disable_gradient_checkpointing) and in LogCompletionsCallback's
    # generation (unwrap_model_for_generation). Framework noise, not ours.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

YAML = Path(__file__).resolve().parents[1] / "fixtures" / "hf" / "trl_callbacks.yaml"
ENTRIES: list[Any] = yaml.safe_load(YAML.read_text(encoding="utf-8"))["custom_callbacks"]
MAX_STEPS = 2


def entry_name(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry["name"])


NAMES = [entry_name(entry) for entry in ENTRIES]


def config_for(name: str) -> dict[str, Any]:
    """The YAML's entry for ``name`` alone, strict: each callback is attached by itself."""
    (entry,) = [entry for entry in ENTRIES if entry_name(entry) == name]
    return {"custom_callbacks": [entry], "strict": True}


def require_absent(module: str) -> None:
    """These cases assert what happens without ``module``; where it is installed, skip."""
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here: this case covers its absence")


def prompt_dataset(n: int, seed: int) -> datasets.Dataset:
    """Prompt-completion rows: SFT trains on them, and TRL's callbacks read ``prompt``."""
    words = sentences(2 * n, seed)
    return datasets.Dataset.from_dict({"prompt": words[:n], "completion": words[n:]})


def sft_trainer(output_dir: Path, *, with_eval: bool = False) -> SFTTrainer:
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        logging_steps=1,
        max_length=16,
        report_to=[],  # neither wandb nor comet_ml is installed here
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="steps" if with_eval else "no",
        eval_steps=1,
        activation_checkpointing=False,
    )
    return SFTTrainer(
        model=tiny_gpt2(),
        args=args,
        train_dataset=text_dataset(8),
        eval_dataset=prompt_dataset(4, seed=5) if with_eval else None,
        processing_class=tiny_tokenizer(),
    )


def dpo_trainer(output_dir: Path, ref_model: torch.nn.Module) -> DPOTrainer:
    words = sentences(16, seed=3)
    pairs = datasets.Dataset.from_dict(
        {"prompt": words[:8], "chosen": words[8:], "rejected": list(reversed(words[8:]))}
    )
    args = DPOConfig(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=2,
        logging_steps=1,
        max_length=16,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        activation_checkpointing=False,
        # SyncRefModelCallback reads these from the trainer's args: sync after every step.
        ref_model_sync_steps=1,
        ref_model_mixup_alpha=0.5,
    )
    return DPOTrainer(
        model=tiny_gpt2(),
        ref_model=ref_model,
        args=args,
        train_dataset=pairs,
        processing_class=tiny_tokenizer(),
    )


def native(trainer: Trainer, class_name: str) -> Any:
    (found,) = [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == class_name]
    return found


class _captured:
    """Collect the records of one logger (``caplog`` would need the root logger's level)."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append  # type: ignore[method-assign]

    def __enter__(self) -> list[logging.LogRecord]:
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)


# -- one case per YAML entry ------------------------------------------------------------------


def bema_runs(tmp_path: Path, config: dict[str, Any]) -> None:
    trainer = callbridge_hf.attach(sft_trainer(tmp_path), config)
    trainer.train()
    callback = native(trainer, "BEMACallback")
    assert callback.update_freq == 1
    assert trainer.state.global_step == MAX_STEPS
    saved = tmp_path / "bema"
    assert (saved / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    live = trainer.model.state_dict()
    # BEMA weights differ from the live ones after two updates.
    assert any(not torch.equal(v, live[k]) for k, v in reloaded.state_dict().items() if k in live)


def rich_progress_runs(tmp_path: Path, config: dict[str, Any]) -> None:
    trainer = callbridge_hf.attach(sft_trainer(tmp_path), config)
    with redirect_stdout(io.StringIO()):
        trainer.train()
    native(trainer, "RichProgressCallback")
    assert trainer.state.global_step == MAX_STEPS


def sync_ref_model_runs_under_dpo(tmp_path: Path, config: dict[str, Any]) -> None:
    ref_model = tiny_gpt2(seed=1)
    before = {k: v.clone() for k, v in ref_model.state_dict().items()}
    trainer = callbridge_hf.attach(dpo_trainer(tmp_path, ref_model), config)
    callback = native(trainer, "SyncRefModelCallback")
    assert callback.ref_model is trainer.ref_model  # injected by attach
    assert callback.accelerator is trainer.accelerator
    trainer.train()
    assert trainer.state.global_step == MAX_STEPS
    after = ref_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # synced towards the policy

    # SFTTrainer has no ref_model: nothing to inject, a clear error before training.
    with pytest.raises(callbridge.ConfigError) as excinfo:
        callbridge_hf.attach(sft_trainer(tmp_path / "sft"), config)
    message = str(excinfo.value)
    assert "'trl.SyncRefModelCallback' needs 'ref_model', which is injected at build" in message
    assert "inject={'ref_model': ...}" in message


def log_completions_runs_without_wandb_or_comet(tmp_path: Path, config: dict[str, Any]) -> None:
    trainer = callbridge_hf.attach(sft_trainer(tmp_path, with_eval=True), config)
    callback = native(trainer, "LogCompletionsCallback")
    assert callback.trainer is trainer  # injected by attach
    assert callback.generation_config.max_new_tokens == 4  # the nested spec, built first
    trainer.train()
    # Neither wandb nor comet_ml: the completions are generated into the table every `freq`
    # steps and logged nowhere; no error, no warning.
    assert callback._last_logged_step == MAX_STEPS
    steps = [row[0] for row in callback.table]
    assert steps == ["1", "1", "2", "2"]  # num_prompts = 2, per step
    assert all(isinstance(row[2], str) for row in callback.table)


def win_rate_is_not_in_this_trl(tmp_path: Path, config: dict[str, Any]) -> None:
    with pytest.raises(callbridge.ConfigError) as excinfo:
        callbridge_hf.attach(sft_trainer(tmp_path, with_eval=True), config)
    message = str(excinfo.value)
    assert "unknown callback 'trl.WinRateCallback'" in message
    assert "module 'trl' has no attribute 'WinRateCallback'" in message


def merge_model_needs_mergekit(tmp_path: Path, config: dict[str, Any]) -> None:
    require_absent("mergekit")
    with pytest.raises(callbridge.ConfigError) as excinfo:
        callbridge_hf.attach(sft_trainer(tmp_path), config)
    message = str(excinfo.value)
    assert (
        "building 'trl.experimental.merge_model_callback.MergeModelCallback' failed: "
        "ImportError: MergeModelCallback requires the `mergekit` extra. "
        "To install, run `pip install mergekit`."
    ) in message


def weave_is_a_no_op_without_weave(tmp_path: Path, config: dict[str, Any]) -> None:
    require_absent("weave")  # installed, it would call weave.init: a network service
    trainer = callbridge_hf.attach(sft_trainer(tmp_path, with_eval=True), config)
    callback = native(trainer, "WeaveCallback")
    assert callback.trainer is trainer
    with _captured("trl.trainer.callbacks") as records:
        trainer.train()
    assert trainer.state.global_step == MAX_STEPS
    assert not callback._weave_initialized
    hints = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert hints
    assert all("Please install weave" in h and "`pip install weave`" in h for h in hints)


CASES: dict[str, Callable[[Path, dict[str, Any]], None]] = {
    "trl.BEMACallback": bema_runs,
    "trl.RichProgressCallback": rich_progress_runs,
    "trl.SyncRefModelCallback": sync_ref_model_runs_under_dpo,
    "trl.LogCompletionsCallback": log_completions_runs_without_wandb_or_comet,
    "trl.WinRateCallback": win_rate_is_not_in_this_trl,
    "trl.experimental.merge_model_callback.MergeModelCallback": merge_model_needs_mergekit,
    "trl.WeaveCallback": weave_is_a_no_op_without_weave,
}


def test_every_yaml_entry_has_a_case() -> None:
    assert sorted(CASES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_trl_callback(name: str, tmp_path: Path) -> None:
    CASES[name](tmp_path, config_for(name))


def test_check_reports_only_the_missing_name(capsys: pytest.CaptureFixture[str]) -> None:
    """trainer, ref_model, accelerator are injected names: check does not want them set."""
    problems = callbridge.check(str(YAML))
    assert [p.key_path for p in problems] == ["custom_callbacks[4]"]  # trl.WinRateCallback
    assert "unknown callback 'trl.WinRateCallback'" in problems[0].message

    assert cli_main(["check", str(YAML)]) == 1
    out = capsys.readouterr().out
    assert "trl.WinRateCallback" in out
    for name in NAMES:
        if name != "trl.WinRateCallback":
            assert f"'{name}'" not in out
