"""Autoload: a project with ``autoload = true`` gets its callbacks in every Lightning Trainer."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

import callbridge_lightning
from callbridge_lightning._autoload import factory
from support.lightning_models import LIGHTNING_NOISE, BoringModel, loader, trainer
from support.recorder import Recorder

pytestmark = pytest.mark.filterwarnings(*LIGHTNING_NOISE)

INSTALLED = any(
    ep.name == "callbridge" for ep in entry_points(group="lightning.pytorch.callbacks_factory")
)


def project(tmp_path: Path, autoload: str | None) -> Path:
    line = f"autoload = {autoload}\n" if autoload is not None else ""
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.callbacks]\n{line}custom_callbacks = ["support.recorder.Recorder"]\n',
        encoding="utf-8",
    )
    return tmp_path


def wrapped(callbacks: list[object]) -> list[object]:
    return [cb for cb in callbacks if isinstance(cb, callbridge_lightning.NeutralCallback)]


def test_factory_builds_the_callbacks_of_a_project_that_opts_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project(tmp_path, "true"))
    (callback,) = wrapped(factory())
    assert isinstance(callback.callback, Recorder)  # type: ignore[attr-defined]


@pytest.mark.parametrize("autoload", [None, "false"])
def test_factory_gives_nothing_without_the_opt_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autoload: str | None
) -> None:
    monkeypatch.chdir(project(tmp_path, autoload))
    assert factory() == []


def test_the_environment_turns_autoload_off_for_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project(tmp_path, "true"))
    monkeypatch.setenv("CALLBRIDGE_AUTOLOAD", "0")
    assert factory() == []


def test_callbridge_config_names_the_file_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALLBRIDGE_CONFIG", str(project(elsewhere, "true") / "pyproject.toml"))
    assert len(wrapped(factory())) == 1


@pytest.mark.skipif(
    not INSTALLED,
    reason="Lightning reads the installed callbridge-lightning's entry point (nox installs it)",
)
def test_every_trainer_of_the_project_gets_the_callbacks_with_no_code_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project(tmp_path, "true"))
    pl_trainer = trainer(tmp_path, max_steps=3)  # no callbacks passed
    (callback,) = wrapped(pl_trainer.callbacks)  # type: ignore[attr-defined]
    pl_trainer.fit(BoringModel(), loader(3), loader(1, seed=1))
    recorder = callback.callback  # type: ignore[attr-defined]
    assert [step for name, step in recorder.events if name == "step_end"] == [1, 2, 3]
