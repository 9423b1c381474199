"""The command finds a project's own modules as its training script does; ``--version``."""

from __future__ import annotations

import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

from callbridge._cli import main


def project(folder: Path) -> str:
    """A project folder with a callback module of its own beside its pyproject.toml."""
    module = f"projcb_{uuid.uuid4().hex[:8]}"  # fresh per test: sys.modules keeps imports
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(
        "import callbridge\n\n\n"
        "class EventTally(callbridge.Callback):\n"
        '    """Counts events."""\n\n'
        "    def __init__(self, every: int = 1) -> None:\n"
        "        self.every = every\n",
        encoding="utf-8",
    )
    (folder / "pyproject.toml").write_text(
        "[tool.callbacks]\nstrict = true\n"
        f'custom_callbacks = [{{ name = "{module}.EventTally", args = {{ every = "2" }} }}]\n',
        encoding="utf-8",
    )
    return module


def test_check_imports_a_module_beside_the_config_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    assert main(["check", "pyproject.toml"]) == 0
    assert capsys.readouterr().out == "pyproject.toml: ok (1 callbacks)\n"
    assert sys.path == before  # restored: main() may run inside pre-commit or a test


def test_check_imports_a_module_beside_the_config_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The config's folder is its project root: searched whatever the working directory."""
    project(tmp_path / "proj")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = str(tmp_path / "proj" / "pyproject.toml")
    assert main(["show", config]) == 0
    assert "every = 2" in capsys.readouterr().out


def test_a_module_not_found_gets_a_hint_and_import_path_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = project(tmp_path / "src")
    (tmp_path / "src" / "pyproject.toml").rename(tmp_path / "pyproject.toml")  # a src layout
    monkeypatch.chdir(tmp_path)
    assert main(["check", "pyproject.toml"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"no module named {module!r}" in lines[1]
    assert lines[2] == (
        "  hint: callbridge imported your modules from . and the installed packages."
        " A module elsewhere needs --import-path DIR (e.g. --import-path "
        "src), PYTHONPATH=DIR, or `pip install -e .` of the project that holds it."
    )
    assert main(["check", "--import-path", "src", "pyproject.toml"]) == 0
    assert capsys.readouterr().out == "pyproject.toml: ok (1 callbacks)\n"


def test_list_takes_import_path_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["list", "--import-path", str(tmp_path), "--json"]) == 0
    assert '"name": "log"' in capsys.readouterr().out


def test_version_prints_the_core_and_each_installed_adapter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"callbridge {version('callbridge')}"
    for line in lines[1:]:
        dist, found = line.split()
        assert dist in {"callbridge-hf", "callbridge-lightning", "callbridge-llamafactory"}
        assert found == version(dist)
