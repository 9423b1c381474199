"""Unmodified HF ``TrainerCallback``s under the Lightning ``Trainer``, against the HF Trainer.

The HF run and the Lightning run train the same tiny GPT-2 (dropout off) on the same
batches with the same optimizer (``support.hf_foreign``): the logs, the evaluation
metrics and the weights are the same, so what a callback does with them must be too.
A plain ``nn.Module`` (Lightning's ``BoringModel``) sees the same evaluation scores.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import callbridge
import callbridge_hf
import callbridge_lightning
from support import hf_foreign, lightning_models
from support.hf_foreign import GPT2Module, ScriptedBoring, hf_trainer, lm_loaders
from support.processes import run_child
from support.receiver import Server

pytestmark = pytest.mark.filterwarnings(*lightning_models.LIGHTNING_NOISE)

EVAL_EVERY, MAX_STEPS, PATIENCE = 2, 20, 2
SECRET = "sk-acme-foreign-SECRET"
SCRIPT = Path(__file__).resolve().parents[1] / "support" / "hf_foreign_script.py"

EARLY_STOPPING = {
    "name": "callbridge_lightning.HFCallbackOnLightning",
    "args": {
        "callback": {
            "name": "transformers.EarlyStoppingCallback",
            "args": {"early_stopping_patience": PATIENCE},
        },
        # What Lightning does not know, as the HF run's TrainingArguments say it.
        "training_args": {"metric_for_best_model": "score", "greater_is_better": False},
    },
}


def uploader(url: str) -> dict[str, Any]:
    return {
        "name": "support.hf_foreign.UploadMonitor",
        "args": {"upload_url": url, "api_key": "${ACME_KEY}"},
    }


class Run:
    """What one training showed: printed lines, uploaded records, the stop step, the model."""

    def __init__(self, printed: str, server: Server, step: int, model: Any, history: Any) -> None:
        self.lines = [ast.literal_eval(line) for line in printed.splitlines() if line[:1] == "{"]
        self.records = sorted(server.stored.values(), key=lambda r: r["idempotency_key"])
        self.authorizations = set(server.authorizations)
        self.step = step
        self.model = model
        self.history = history


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACME_KEY", SECRET)
        yield


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory, env: None) -> Iterator[Run]:
    """The HF Trainer with EarlyStoppingCallback, its default PrinterCallback and the uploader."""
    server = Server()
    out = io.StringIO()
    config = {
        "custom_callbacks": [
            {"name": "transformers.EarlyStoppingCallback", "args": {"early_stopping_patience": 2}},
            uploader(server.url),
        ]
    }
    trainer = hf_trainer(
        tmp_path_factory.mktemp("hf"),
        callbridge_hf.callbacks(config),
        max_steps=MAX_STEPS,
        eval_every=EVAL_EVERY,
    )
    # disable_tqdm: the HF Trainer prints its logs with transformers.PrinterCallback.
    assert any(
        isinstance(cb, transformers.PrinterCallback) for cb in trainer.callback_handler.callbacks
    )
    with contextlib.redirect_stdout(out):
        trainer.train()
    yield Run(out.getvalue(), server, trainer.state.global_step, trainer.model, trainer.state)
    server.close()


def lightning_fit(root: Path, module: Any, config: dict[str, Any], loaders: Any) -> Any:
    trainer = lightning_models.trainer(
        root,
        callbridge_lightning.callbacks(config),
        max_steps=MAX_STEPS,
        max_epochs=-1,
        log_every_n_steps=1,
        val_check_interval=EVAL_EVERY,
    )
    trainer.fit(module, *loaders)
    return trainer


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory, env: None) -> Iterator[Run]:
    """The same three unmodified HF callbacks under Lightning, GPT-2 inside a LightningModule."""
    server = Server()
    out = io.StringIO()
    config = {
        "custom_callbacks": ["transformers.PrinterCallback", EARLY_STOPPING, uploader(server.url)]
    }
    module = GPT2Module(EVAL_EVERY)
    with contextlib.redirect_stdout(out):
        trainer = lightning_fit(tmp_path_factory.mktemp("pl"), module, config, lm_loaders())
    wrapped = callbridge_lightning.unwrap(trainer.callbacks)
    # Each HF callback has its own TrainerState (best_metric follows its own training_args).
    state = next(
        cb.state
        for cb in wrapped
        if isinstance(cb, callbridge_lightning.HFCallbackOnLightning)
        and isinstance(cb.callback, transformers.EarlyStoppingCallback)
    )
    yield Run(out.getvalue(), server, trainer.global_step, module.model, state)
    server.close()


def test_early_stopping_stops_at_the_hf_trainers_step(hf_run: Run, lightning_run: Run) -> None:
    """transformers.EarlyStoppingCallback, unmodified, on the same metric sequence."""
    assert hf_run.step < MAX_STEPS  # it did stop early
    assert lightning_run.step == hf_run.step
    # Lightning logs float32 tensors: 0.8 arrives as 0.800000011920929.
    assert lightning_run.history.best_metric == pytest.approx(hf_run.history.best_metric)


def test_early_stopping_on_a_plain_module(tmp_path: Path, hf_run: Run) -> None:
    """The same stop with Lightning's BoringModel (no HF model inside)."""
    trainer = lightning_fit(
        tmp_path, ScriptedBoring(EVAL_EVERY), {"custom_callbacks": [EARLY_STOPPING]},
        (lightning_models.loader(16), lightning_models.loader(2, seed=1)),
    )  # fmt: skip
    assert trainer.global_step == hf_run.step


def test_printer_callback_prints_the_hf_trainers_lines(hf_run: Run, lightning_run: Run) -> None:
    """transformers.PrinterCallback: the same lines, less HF's wall-clock figures and summary."""
    hf_lines = [
        hf_foreign.without_wall_clock(line) for line in hf_run.lines if "train_runtime" not in line
    ]
    assert lightning_run.lines == hf_lines
    assert len(hf_lines) == hf_run.step + hf_run.step // EVAL_EVERY  # a log per step, each eval
    assert {"loss", "grad_norm", "learning_rate", "epoch"} == set(lightning_run.lines[0])
    assert {"eval_loss", "eval_score", "epoch"} == set(lightning_run.lines[EVAL_EVERY])


def test_company_uploader_delivers_the_same_records(hf_run: Run, lightning_run: Run) -> None:
    """The reference document's on_log uploader: the same records reach the platform."""

    def comparable(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "logs": hf_foreign.without_wall_clock(record["logs"]), "output_dir": None}

    hf_records = [comparable(r) for r in hf_run.records if "train_runtime" not in r["logs"]]
    assert [comparable(r) for r in lightning_run.records] == hf_records
    assert len(hf_records) == len(hf_run.lines) - 1
    assert lightning_run.authorizations == {f"Bearer {SECRET}"}


def test_bema_weights_match_the_hf_trainers(tmp_path: Path, env: None) -> None:
    """trl.BEMACallback: bit-identical averaged weights after the same trajectory."""
    trl = pytest.importorskip("trl")
    hf_out, pl_out = tmp_path / "hf", tmp_path / "pl"
    bema = {"name": "trl.BEMACallback", "args": {"update_freq": 1, "update_after": 2}}
    trainer = hf_trainer(
        hf_out, callbridge_hf.callbacks({"custom_callbacks": [bema]}),
        max_steps=8, eval_every=4, eval_strategy="no",
    )  # fmt: skip
    trainer.train()
    module = GPT2Module(EVAL_EVERY)
    pl_trainer = lightning_models.trainer(
        pl_out, callbridge_lightning.callbacks({"custom_callbacks": [bema]}),
        max_steps=8, max_epochs=-1, log_every_n_steps=1,
    )  # fmt: skip
    pl_trainer.fit(module, *lm_loaders())  # an evaluation changes no weight
    del trl
    hf_bema = transformers.GPT2LMHeadModel.from_pretrained(hf_out / "bema")
    pl_bema = transformers.GPT2LMHeadModel.from_pretrained(pl_out / "bema")
    live = dict(module.model.named_parameters())
    hf_live = dict(trainer.model.named_parameters())
    for name, param in hf_bema.named_parameters():
        assert torch.equal(live[name], hf_live[name])  # the same trajectory, bit for bit
        assert torch.equal(pl_bema.get_parameter(name), param)  # so the same averages
        assert not torch.equal(param, live[name])  # an average, not the live weights


def test_kwargs_hf_does_not_pass_fail_naming_the_callback(tmp_path: Path) -> None:
    """A callback reaching for the HF Trainer through kwargs: a message, not a bare KeyError."""
    config = {
        "callback_errors": "raise",
        "custom_callbacks": ["support.hf_foreign.NeedsTrainer"],
    }
    with pytest.raises(callbridge_lightning._foreign.NotEmulatedError) as info:
        lightning_fit(
            tmp_path, ScriptedBoring(EVAL_EVERY), config,
            (lightning_models.loader(4), lightning_models.loader(2, seed=1)),
        )  # fmt: skip
    assert str(info.value) == (
        "support.hf_foreign.NeedsTrainer.on_train_begin reads kwargs['trainer'] (the HF Trainer "
        "itself (run.native['trainer'] is the Lightning trainer)), which the HF emulation under "
        "Lightning does not pass (it passes: model, processing_class, optimizer, lr_scheduler, "
        "train_dataloader, eval_dataloader). Write it as a neutral callbridge.Callback: "
        "run.native['trainer'] and run.native['pl_module'] are Lightning's objects"
    )


def test_args_field_not_emulated_names_it_and_the_fix(tmp_path: Path) -> None:
    config = {"callback_errors": "raise", "custom_callbacks": ["support.hf_foreign.ReadsArgs"]}
    with pytest.raises(AttributeError, match=r"reads args\.hub_model_id, which the HF emulation"):
        lightning_fit(
            tmp_path, ScriptedBoring(EVAL_EVERY), config,
            (lightning_models.loader(4), lightning_models.loader(2, seed=1)),
        )  # fmt: skip


def test_the_hf_callback_takes_the_entrys_place(tmp_path: Path) -> None:
    """Adopted at bind: a neutral callback in the configured place, under the entry's label."""
    config = {
        "custom_callbacks": [
            "support.recorder.Recorder",
            {"name": "transformers.EarlyStoppingCallback", "args": {"early_stopping_patience": 2}},
        ]
    }
    binding = callbridge.bind(
        config, framework="lightning", adopt=callbridge_lightning._foreign.adopt
    )
    entries = binding.session.entries
    assert [b.label for b in entries] == [
        "support.recorder.Recorder (custom_callbacks[0])",
        "transformers.EarlyStoppingCallback (custom_callbacks[1])",
    ]
    wrapped = entries[1].callback
    assert isinstance(wrapped, callbridge_lightning.HFCallbackOnLightning)
    assert type(wrapped.callback) is transformers.EarlyStoppingCallback
    assert wrapped.callback.early_stopping_patience == 2
    # Without an adapter's adopt, the core refuses it as before.
    with pytest.raises(callbridge.ConfigError, match="is a Hugging Face Trainer"):
        callbridge.bind(config, framework="lightning")


def _script(tmp_path: Path, config: dict[str, Any], *args: str, name: str) -> list[dict[str, Any]]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"custom_callbacks": config["custom_callbacks"]}), encoding="utf-8")
    out = tmp_path / name
    run_child(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path / f"root-{name}"),
         "--config", str(path), "--out", str(out), *args],
        cwd=tmp_path, env=lightning_models.subprocess_env(), timeout=300,
    )  # fmt: skip
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(tmp_path.glob(f"{name}.rank*.json"))
    ]


def test_stateful_callback_resumes_exactly_in_a_fresh_process(tmp_path: Path) -> None:
    """EarlyStoppingCallback's ExportableState and best_metric survive a Lightning checkpoint.

    Evaluations at steps 2, 4, 6 leave the patience counter at 1 (0.9 after 0.8); the
    resumed run must stop at step 8 as the uninterrupted one does, which it cannot do
    without the counter and the best metric.
    """
    config = {"custom_callbacks": [EARLY_STOPPING]}
    # 6 batches an epoch: the checkpoint of step 6 ends an epoch, so that the resumed run
    # sees the same batches (Lightning restarts a plain DataLoader's epoch from its start).
    steps = ("--max-steps", str(MAX_STEPS), "--train-batches", "6")
    (whole,) = _script(tmp_path, config, *steps, name="whole")
    first_steps = ("--max-steps", "6", "--train-batches", "6", "--save-at-eval")
    (first,) = _script(tmp_path, config, *first_steps, name="first")
    ckpt = tmp_path / "root-first" / "checkpoints" / "step6.ckpt"
    assert first["callbacks"][0]["state"]["attributes"] == {"early_stopping_patience_counter": 1}
    (resumed,) = _script(tmp_path, config, *steps, "--ckpt-path", str(ckpt), name="resumed")
    assert resumed["global_step"] == whole["global_step"] == 8
    assert resumed["callbacks"][0]["state"] == whole["callbacks"][0]["state"]
    assert resumed["callbacks"][0]["best_metric"] == whole["callbacks"][0]["best_metric"]
    assert resumed["callbacks"][0]["log_history"] == whole["callbacks"][0]["log_history"]


@pytest.mark.ddp
def test_one_ranks_stop_request_stops_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DDP, 2 processes: HF's should_training_stop on rank 1 only stops both ranks together.

    The uploader beside it sees every log on both ranks and posts from rank 0 only
    (``state.is_world_process_zero``), as under the HF Trainer.
    """
    monkeypatch.setenv("ACME_KEY", SECRET)
    server = Server()
    try:
        config = {
            "custom_callbacks": [
                {"name": "support.hf_foreign.StopOnRank", "args": {"step": 3, "rank": 1}},
                uploader(server.url),
            ]
        }
        ranks = _script(tmp_path, config, "--max-steps", str(MAX_STEPS), "--ddp", name="ddp")
    finally:
        server.close()
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["global_step"] for r in ranks] == [3, 3]
    histories = [r["callbacks"][1]["log_history"] for r in ranks]
    # A log every step, the evaluation at 2, and the one Lightning runs on a stop
    # (lightning_evaluate_on_stop in docs/events.md).
    steps = [1, 2, 2, 3, 3]
    assert [[h["step"] for h in history] for history in histories] == [steps, steps]
    assert sorted(r["step"] for r in server.stored.values()) == steps


def test_lightning_callbacks_under_hf_stay_an_error() -> None:
    """Out of scope: a Lightning callback under the HF Trainer is still refused at load."""
    with pytest.raises(callbridge.ConfigError, match="is a PyTorch Lightning callback"):
        callbridge_hf.callbacks(
            {"custom_callbacks": ["lightning.pytorch.callbacks.LearningRateMonitor"]}
        )


def test_hf_hooks_come_in_the_hf_trainers_order_with_its_state(tmp_path: Path) -> None:
    """Every HF hook, micro-batches and the optimizer included, at HF's step and epoch.

    Gradient accumulation 2, an evaluation every 2 steps and a save asked for in
    ``on_step_end`` of step 3. Two differences are left, both documented: the HF
    Trainer logs its run summary once more before ``on_train_end``, and under Lightning
    the save an HF callback asks for comes right after ``on_step_end``, before that
    step's ``on_log``.
    """
    config = {
        "custom_callbacks": [{"name": "support.hf_foreign.HookOrder", "args": {"save_at": 3}}]
    }
    hf = hf_trainer(
        tmp_path / "hf", callbridge_hf.callbacks(config),
        max_steps=4, eval_every=2, gradient_accumulation_steps=2,
    )  # fmt: skip
    hf.train()
    (hf_order,) = [
        cb for cb in hf.callback_handler.callbacks if isinstance(cb, hf_foreign.HookOrder)
    ]
    pl_trainer = lightning_models.trainer(
        tmp_path / "pl", callbridge_lightning.callbacks(config),
        max_steps=4, max_epochs=-1, log_every_n_steps=1, val_check_interval=4,
        accumulate_grad_batches=2,
    )  # fmt: skip
    pl_trainer.fit(GPT2Module(2), *lm_loaders())
    (wrapper,) = callbridge_lightning.unwrap(pl_trainer.callbacks)
    pl_seen = list(wrapper.callback.seen)

    hf_seen = list(hf_order.seen)
    summary = len(hf_seen) - 2
    assert hf_seen[summary][0] == "on_log"
    assert hf_seen[-1][0] == "on_train_end"
    del hf_seen[summary]  # hf_summary_log
    save = pl_seen.index(("on_save", 3, 0.75))
    assert pl_seen[save - 1 : save + 2] == [
        ("on_step_end", 3, 0.75), ("on_save", 3, 0.75), ("on_log", 3, 0.75),
    ]  # fmt: skip
    pl_seen[save : save + 2] = [pl_seen[save + 1], pl_seen[save]]
    assert pl_seen == hf_seen
    hooks = {hook for hook, _, _ in hf_seen}
    assert {"on_init_end", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step",
            "on_prediction_step", "on_evaluate", "on_save"} <= hooks  # fmt: skip
    # should_save wrote a Lightning checkpoint at step 3 (HF wrote its checkpoint-3 folder).
    assert (tmp_path / "pl" / "checkpoints" / "step=3.ckpt").is_file()
    assert (tmp_path / "hf" / "checkpoint-3").is_dir()


def test_a_failing_hf_callback_is_isolated_by_the_error_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """callback_errors = 'log' (the default): the hook's error is logged once, training goes on."""
    trainer = lightning_fit(
        tmp_path, ScriptedBoring(EVAL_EVERY),
        {"custom_callbacks": ["support.hf_foreign.NeedsTrainer", EARLY_STOPPING]},
        (lightning_models.loader(16), lightning_models.loader(2, seed=1)),
    )  # fmt: skip
    assert trainer.global_step == 8  # EarlyStoppingCallback, after it, still stopped training
    (segment,) = [
        cb for cb in trainer.callbacks if isinstance(cb, callbridge_lightning.NeutralCallback)
    ]
    errors = segment._bridge.session.run.errors
    assert errors.counts == {
        ("support.hf_foreign.NeedsTrainer (custom_callbacks[0])", "on_train_begin"): 1
    }
    assert "reads kwargs['trainer']" in caplog.text


def test_from_config_runs_hf_callbacks_too(tmp_path: Path) -> None:
    """LightningCLI's FromConfig builds the same adopted callbacks."""
    path = tmp_path / "callbacks.yaml"
    path.write_text(
        "custom_callbacks:\n"
        "  - name: transformers.EarlyStoppingCallback\n"
        "    args: {early_stopping_patience: 4}\n",
        encoding="utf-8",
    )
    (wrapped,) = callbridge_lightning.unwrap(callbridge_lightning.FromConfig(str(path)).children)
    assert isinstance(wrapped, callbridge_lightning.HFCallbackOnLightning)
    assert wrapped.callback.early_stopping_patience == 4


def test_a_setting_lightning_lacks_is_named_with_its_fix(tmp_path: Path) -> None:
    """EarlyStoppingCallback named as is: HF's own assertion, with the field and how to set it."""
    config = {
        "callback_errors": "raise",
        "custom_callbacks": [
            {"name": "transformers.EarlyStoppingCallback", "args": {"early_stopping_patience": 2}}
        ],
    }
    with pytest.raises(callbridge_lightning._foreign.NotEmulatedError) as info:
        lightning_fit(
            tmp_path, ScriptedBoring(EVAL_EVERY), config,
            (lightning_models.loader(4), lightning_models.loader(2, seed=1)),
        )  # fmt: skip
    assert str(info.value) == (
        "transformers.trainer_callback.EarlyStoppingCallback.on_train_begin failed: "
        "EarlyStoppingCallback requires metric_for_best_model to be defined "
        "(args.metric_for_best_model is None: the Lightning trainer has no such setting. Set it "
        "for this entry with callbridge_lightning.HFCallbackOnLightning(callback=..., "
        "training_args={'metric_for_best_model': ...}))"
    )


def test_a_callbacks_own_key_error_passes_unchanged(tmp_path: Path) -> None:
    """A missing metric is the callback's KeyError, as under HF, not a missing kwarg."""
    config = {
        "callback_errors": "raise",
        "custom_callbacks": ["support.hf_foreign.ReadsMissingMetric"],
    }
    with pytest.raises(KeyError) as info:
        lightning_fit(
            tmp_path, ScriptedBoring(EVAL_EVERY), config,
            (lightning_models.loader(4), lightning_models.loader(2, seed=1)),
        )  # fmt: skip
    assert type(info.value) is KeyError
    assert info.value.args == ("eval_accuracy",)
