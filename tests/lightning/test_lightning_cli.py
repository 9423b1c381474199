"""``LightningCLI`` with ``callbridge_lightning.FromConfig`` in its ``trainer.callbacks``."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import callbridge_lightning
from support.lightning_models import BoringDataModule, BoringModel

# Lightning 2.6.6's CLI calls jsonargparse 4.53 APIs that jsonargparse deprecated (skip_none,
# add_instantiator...); nothing here calls jsonargparse itself.
pytestmark = pytest.mark.filterwarnings(
    "ignore::jsonargparse._deprecated.JsonargparseDeprecationWarning"
)


@pytest.fixture(autouse=True)
def _argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """As from a command line: pytest's own arguments are no CLI arguments (LightningCLI warns)."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def cli_config(tmp_path: Path, callbacks_path: Path) -> Path:
    return write_yaml(
        tmp_path / "fit.yaml",
        {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "max_steps": 4,
                "log_every_n_steps": 2,
                "logger": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "default_root_dir": str(tmp_path / "root"),
                "callbacks": [
                    {
                        "class_path": "callbridge_lightning.FromConfig",
                        "init_args": {"path": str(callbacks_path)},
                    }
                ],
            },
            "data": {"train_batches": 4, "val_batches": 2},
        },
    )


def recorded(path: Path) -> list[tuple[str, int]]:
    return [
        (event, int(step))
        for _, event, step in (line.split() for line in path.read_text().splitlines())
    ]


def test_lightning_cli_fit_runs_the_configured_neutral_and_native_callbacks(tmp_path: Path) -> None:
    events, ckpt = tmp_path / "events.txt", tmp_path / "ckpt"
    callbacks_path = write_yaml(
        tmp_path / "callbacks.yaml",
        {
            "custom_callbacks": [
                {"name": "support.recorder.Recorder", "args": {"path": str(events)}},
                {
                    "name": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "args": {"dirpath": str(ckpt), "every_n_train_steps": 2, "save_top_k": -1},
                },
            ]
        },
    )

    cli = LightningCLI(
        BoringModel,
        BoringDataModule,
        args=["fit", "--config", str(cli_config(tmp_path, callbacks_path))],
    )

    assert cli.trainer.global_step == 4
    from_config = cli.trainer.callbacks[0]
    assert isinstance(from_config, callbridge_lightning.FromConfig)
    bridged, configured = from_config.children
    # The configured callbacks run in FromConfig's place.
    assert cli.trainer.callbacks[1:3] == [bridged, configured]
    assert isinstance(configured, ModelCheckpoint)
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    steps = [e for s in range(4) for e in (("step_begin", s), ("step_end", s + 1))]
    run = recorded(events)
    assert run[:2] == [("train_begin", 0), ("epoch_begin", 0)]
    assert [e for e in run if e[0].startswith("step_")] == steps
    assert [e for e in run if e[0].startswith(("log", "evaluate"))] == [
        # The sanity check (num_sanity_val_steps=2 by default) is no evaluation.
        ("log:loss", 2), ("log:loss", 4),
        ("evaluate_begin", 4), ("log:val_loss", 4), ("evaluate:val_loss", 4),
    ]  # fmt: skip
    assert ("save", 2) in run
    assert ("save", 4) in run
    assert run[-1] == ("train_end", 4)


def test_a_bad_callbacks_file_fails_when_the_cli_builds_the_trainer(tmp_path: Path) -> None:
    """FromConfig builds at construction: under strict = true a config error stops the CLI early.

    jsonargparse reports a failed instantiation as its own ValueError (ConfigError is
    one too), quoting the callbridge message with its file and key path.
    """
    callbacks_path = write_yaml(
        tmp_path / "callbacks.yaml",
        {"strict": True, "custom_callbacks": ["support.recorder.Recordr"]},
    )
    where = f"{callbacks_path}: custom_callbacks[0]: unknown callback 'support.recorder.Recordr'"

    with pytest.raises(ValueError, match=re.escape(where)):
        LightningCLI(
            BoringModel,
            BoringDataModule,
            args=["fit", "--config", str(cli_config(tmp_path, callbacks_path))],
        )

    assert not (tmp_path / "root").exists()
