"""Native callbacks in a config: Lightning's pass through in order; Hugging Face's are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

import callbridge_lightning
from support.lightning_models import BoringModel, loader, trainer

RECORDER = "support.recorder.Recorder"


def config(tmp_path: Path) -> dict[str, Any]:
    return {
        "custom_callbacks": [
            RECORDER,
            {
                "name": "lightning.pytorch.callbacks.ModelCheckpoint",
                "args": {
                    "dirpath": str(tmp_path / "ckpt"),
                    "every_n_train_steps": 2,
                    "save_top_k": -1,
                },
            },
            {
                "name": "lightning.pytorch.callbacks.EarlyStopping",
                # min_delta so large that no epoch improves on the first:
                # a stop after 1 + patience epochs.
                "args": {"monitor": "val_loss", "mode": "min", "patience": 1, "min_delta": 1000.0},
            },
            {"name": RECORDER, "args": {"log_keys": ["val_loss"]}},
        ]
    }


def test_native_callbacks_pass_through_in_configured_order_with_their_args(tmp_path: Path) -> None:
    callbacks = callbridge_lightning.callbacks(config(tmp_path))

    kinds = [type(cb) for cb in callbacks]
    assert kinds[1:3] == [ModelCheckpoint, EarlyStopping]
    assert all(isinstance(callbacks[i], callbridge_lightning.NeutralCallback) for i in (0, 3))
    checkpoint, stopping = callbacks[1], callbacks[2]
    assert checkpoint.dirpath == str(tmp_path / "ckpt")
    assert checkpoint._every_n_train_steps == 2  # no public getter
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val_loss", "min", 1)


def test_native_callbacks_work_in_a_real_fit(tmp_path: Path) -> None:
    """The configured ModelCheckpoint saves and EarlyStopping stops, beside neutral callbacks."""
    callbacks = callbridge_lightning.callbacks(config(tmp_path))
    steps_per_epoch = 3
    tr = trainer(
        tmp_path, callbacks, max_epochs=10, log_every_n_steps=50, enable_checkpointing=True
    )
    tr.fit(BoringModel(), loader(steps_per_epoch), loader(2, seed=1))

    # Epoch 0 sets the best val_loss, epoch 1 misses it by min_delta: patience 1 is used up.
    assert tr.current_epoch == 2
    assert tr.global_step == 2 * steps_per_epoch
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=1-step=6.ckpt",
    ]  # fmt: skip
    # Lightning runs checkpoint callbacks last; the others keep the configured order.
    assert [cb for cb in tr.callbacks if cb in callbacks] == [
        callbacks[0],
        callbacks[2],
        callbacks[3],
        callbacks[1],
    ]
    last = callbacks[3].callback
    assert last.events[-1] == ("train_end", 6)
    assert last.counters["save"] == 3
