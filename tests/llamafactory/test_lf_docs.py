"""docs/migration.md's LLaMA-Factory section, run by the docs test where LLaMA-Factory is.

tests/cross/test_cross_docs.py runs every block of the documentation, but its suite has no
LLaMA-Factory, so it skips the ``callbridge-lf`` lines, saying where they run: here, with
that test's own machinery (the same block parsing, checks and command runner).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT


def _docs_test() -> Any:
    spec = importlib.util.spec_from_file_location(
        "cross_docs", ROOT / "tests" / "cross" / "test_cross_docs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCS = _docs_test()
MIGRATION = ROOT / "docs" / "migration.md"


def _section_blocks() -> list[Any]:
    lines = MIGRATION.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines, 1) if line.startswith("## From a LLaMA-Factory"))
    end = next(i for i, line in enumerate(lines, 1) if i > start and line.startswith("## "))
    return [b for b in DOCS.blocks_of(MIGRATION) if start < b.line < end]


BLOCKS = _section_blocks()


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    for session in DOCS._SESSIONS.values():
        shutil.rmtree(session.workdir, ignore_errors=True)


def test_the_section_has_runnable_blocks() -> None:
    langs = [b.lang for b in BLOCKS if DOCS._skip_reason(b) is None]
    assert "bash" in langs
    assert "yaml" in langs


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_llamafactory_block(block: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block of the section runs as test_cross_docs runs it, callbridge-lf lines included."""
    reason = DOCS._skip_reason(block)
    if reason is not None:
        pytest.skip(f"{block.id}: {reason}")
    monkeypatch.syspath_prepend(str(Path(DOCS.COMPANY)))
    if block.lang == "python":
        DOCS.session_of(block.path).run_python(block)
    elif block.lang in ("toml", "yaml", "yml"):
        DOCS.check_config(block)
    else:
        DOCS.run_cli(block)
