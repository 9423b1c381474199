"""A raising native Lightning ``Callback`` is isolated like a neutral callback, keeping its type."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import EarlyStopping

import callbridge_lightning
from support.lightning_models import BoringModel, loader, trainer
from support.native_raisers import LightningRaiser

LABEL = "support.native_raisers.LightningRaiser (custom_callbacks[0])"


def config(policy: str | None = None, **options: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "custom_callbacks": [
            "support.native_raisers.LightningRaiser",
            {"name": "reporter", "args": {"filename": "report.json"}},
        ],
        **options,
    }
    if policy is not None:
        data["callback_errors"] = policy
    return data


def fit(tmp_path: Path, data: dict[str, Any]) -> tuple[Any, Any]:
    """Four optimizer steps in one epoch."""
    callbacks = callbridge_lightning.callbacks(data)
    [native] = [cb for cb in callbacks if isinstance(cb, LightningRaiser)]
    tr = trainer(tmp_path, callbacks, max_epochs=1, log_every_n_steps=2)
    tr.fit(BoringModel(), loader(4), loader(2, seed=1))
    return tr, native


def report(tmp_path: Path) -> dict[str, Any]:
    found = next(tmp_path.rglob("report.json"))
    data: dict[str, Any] = json.loads(found.read_text(encoding="utf-8"))
    return data


def test_a_raising_lightning_callback_does_not_stop_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callbridge")
    tr, native = fit(tmp_path, config())
    assert tr.global_step == 4
    assert native.calls == {"train_begin": 1, "step": 4, "train_end": 1}
    assert type(native) is LightningRaiser
    errors = [
        r.getMessage() for r in caplog.records if r.name == "callbridge" and "raised in" in r.msg
    ]
    assert errors == [
        f"callbridge: callback {LABEL} raised in on_train_batch_end (later errors of this hook "
        "are counted, not logged; callback_errors = 'raise' makes them stop training)"
    ]
    assert report(tmp_path)["callback_errors"] == {
        "total": 4,
        "counts": [{"callback": LABEL, "hook": "on_train_batch_end", "count": 4}],
        "disabled": [],
    }


def test_raise_policy_re_raises_the_native_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"^native callback fails in step$"):
        fit(tmp_path, config("raise"))


def test_disable_policy_turns_the_native_callback_off(tmp_path: Path) -> None:
    tr, native = fit(tmp_path, config("disable", callback_max_failures=2))
    assert tr.global_step == 4
    assert native.calls == {"train_begin": 1, "step": 2}
    assert report(tmp_path)["callback_errors"]["disabled"] == [LABEL]


def test_a_lightning_callback_keeps_its_class_in_the_trainer(tmp_path: Path) -> None:
    data = {
        "custom_callbacks": [
            {"name": "lightning.pytorch.callbacks.EarlyStopping", "args": {"monitor": "val_loss"}}
        ]
    }
    callbacks = callbridge_lightning.callbacks(data)
    tr = trainer(tmp_path, callbacks, max_epochs=1)
    [found] = [cb for cb in tr.callbacks if isinstance(cb, EarlyStopping)]
    assert type(found) is EarlyStopping
    assert tr.early_stopping_callback is found
