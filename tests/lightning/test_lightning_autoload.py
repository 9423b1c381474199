"""Autoload: a project with ``autoload = true`` gets its callbacks in every Lightning Trainer."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import callbridge_lightning
from callbridge_lightning._autoload import AutoloadGate, factory
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
    """The neutral wrappers in a list, those held by an autoload gate included."""
    found: list[object] = []
    for cb in callbacks:
        if isinstance(cb, AutoloadGate):
            found += wrapped(list(cb.children)) if cb.inserted is None else []
        elif isinstance(cb, callbridge_lightning.NeutralCallback):
            found.append(cb)
    return found


def step_ends(callback: object) -> list[int]:
    recorder = callback.callback  # type: ignore[attr-defined]
    return [step for name, step in recorder.events if name == "step_end"]


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
    pl_trainer.fit(BoringModel(), loader(3), loader(1, seed=1))
    (callback,) = wrapped(pl_trainer.callbacks)  # type: ignore[attr-defined]
    assert step_ends(callback) == [1, 2, 3]


def explicit_and_autoloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> list[object]:
    """What Lightning does with autoload on: the explicit list, then the factory's."""
    explicit = callbridge_lightning.callbacks(tmp_path / "pyproject.toml")
    autoloaded = factory()
    monkeypatch.setenv("CALLBRIDGE_AUTOLOAD", "0")  # where installed, Lightning's call adds none
    pl_trainer = trainer(tmp_path, [*explicit, *autoloaded], max_steps=3)  # no state_key clash
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        pl_trainer.fit(BoringModel(), loader(3), loader(1, seed=1))
    return pl_trainer.callbacks  # type: ignore[attr-defined, no-any-return]


def test_autoload_and_explicit_callbacks_use_the_explicit_ones_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(project(tmp_path, "true"))
    callbacks = explicit_and_autoloaded(tmp_path, monkeypatch, caplog)
    (callback,) = wrapped(callbacks)  # one set: the explicit one
    assert step_ends(callback) == [1, 2, 3]  # every hook once, not twice
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"callbridge: {(tmp_path / 'pyproject.toml').resolve()} has autoload = true, and this "
        "Trainer was also given callbridge callbacks (callbridge_lightning.callbacks(...) or "
        "FromConfig): using those only, the autoloaded ones are left out. To silence this, "
        "remove one of the two: autoload = true (or set CALLBRIDGE_AUTOLOAD=0), or the "
        "explicit callbacks"
    ]


@pytest.mark.skipif(
    not INSTALLED,
    reason="Lightning reads the installed callbridge-lightning's entry point (nox installs it)",
)
def test_a_trainer_given_the_callbacks_explicitly_under_autoload_does_not_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Lightning's own merge: it used to stop on two stateful callbacks with one state_key."""
    monkeypatch.chdir(project(tmp_path, "true"))
    explicit = callbridge_lightning.callbacks("pyproject.toml")
    pl_trainer = trainer(tmp_path, explicit, max_steps=3)
    with caplog.at_level(logging.WARNING, logger="callbridge"):
        pl_trainer.fit(BoringModel(), loader(3), loader(1, seed=1))
    (callback,) = wrapped(pl_trainer.callbacks)  # type: ignore[attr-defined]
    assert step_ends(callback) == [1, 2, 3]
    assert [r.getMessage()[:40] for r in caplog.records if r.levelno == logging.WARNING] == [
        f"callbridge: {(tmp_path / 'pyproject.toml').resolve()}"[:40]
    ]
