"""The public facade (callbridge/__init__.py), and what importing and using the core costs."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import callbridge

from .helpers import FRAMEWORKS, subprocess_env


def test_all_is_sorted() -> None:
    """Plain ``sorted()`` order (the ``noqa: RUF022`` in ``__init__`` says so)."""
    assert callbridge.__all__ == sorted(callbridge.__all__)


def test_all_exports_every_public_name_and_nothing_else() -> None:
    public = {
        name
        for name in dir(callbridge)
        if not name.startswith("_") and not isinstance(getattr(callbridge, name), types.ModuleType)
    }
    assert public | {"__version__"} == set(callbridge.__all__)


def test_every_lazy_name_is_exported_and_resolves() -> None:
    """The facade loads its modules on first use: each name in the table is one of ``__all__``."""
    lazy = callbridge._LAZY  # type: ignore[attr-defined]
    assert set(lazy) <= set(callbridge.__all__)
    for name, module in lazy.items():
        assert getattr(callbridge, name) is getattr(
            __import__(f"callbridge.{module}", fromlist=[name]), name
        )


def test_import_alone_loads_no_attrs_and_no_implementation_module() -> None:
    """``import callbridge`` is cheap (``callbridge --version``, pre-commit hooks); use loads."""
    code = (
        "import sys, callbridge\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('attr', 'attrs'))\n"
        "callbridge.Callback\n"
        "after = 'attrs' in sys.modules\n"
        "print(before, after, callbridge.Callback.__module__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=True,
    )
    assert proc.stdout == "[] True callbridge\n"


@pytest.mark.parametrize("name", callbridge.__all__)
def test_exported_classes_and_functions_carry_the_public_module_name(name: str) -> None:
    """Tracebacks and reprs say ``callbridge.ConfigError``, not ``callbridge._errors...``."""
    value = getattr(callbridge, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert value.__module__ == "callbridge"


@pytest.mark.parametrize(
    "name", [n for n in callbridge.__all__ if inspect.isclass(getattr(callbridge, n))]
)
def test_exported_classes_have_resolvable_type_hints(name: str) -> None:
    """Renaming ``__module__`` keeps ``get_type_hints`` working (cattrs, jsonargparse use it)."""
    cls = getattr(callbridge, name)
    typing.get_type_hints(cls)
    typing.get_type_hints(cls.__init__)


def test_version_is_the_distributions() -> None:
    from importlib.metadata import version

    assert callbridge.__version__ == version("callbridge")


# No framework at import, load, build or check. Stub packages named like the frameworks sit
# first on the path, so an attempt to import one is seen even where the real one is absent.


@pytest.fixture
def framework_stubs(tmp_path: Path) -> Path:
    for name in FRAMEWORKS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("", encoding="utf-8")
    return tmp_path


def run_python(code: str, stubs: Path, *args: str) -> dict[str, object]:
    env = subprocess_env()
    env["PYTHONPATH"] = f"{stubs}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


REPORT = f"""
import json, sys
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r})
print(json.dumps({{"frameworks": loaded, "result": result}}))
"""


def test_import_load_and_build_import_no_framework(framework_stubs: Path) -> None:
    code = (
        "import callbridge\n"
        "cfg = callbridge.load({'custom_callbacks': ['log', {'name': 'early_stopping', "
        "'args': {'early_stopping_patience': '2'}}]})\n"
        "result = [type(cb).__name__ for cb in callbridge.build(cfg, strict=True)]\n" + REPORT
    )
    report = run_python(code, framework_stubs)
    assert report == {"frameworks": [], "result": ["LogCallback", "EarlyStoppingCallback"]}


def test_the_stubs_would_be_seen(framework_stubs: Path) -> None:
    """The check above can fail: importing a framework is noticed."""
    report = run_python("import callbridge, torch\nresult = None\n" + REPORT, framework_stubs)
    assert report["frameworks"] == ["torch"]


def test_callbridge_check_imports_no_framework(framework_stubs: Path, tmp_path: Path) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text(
        '[tool.callbacks]\ncustom_callbacks = ["log", "early_stopping"]\n', encoding="utf-8"
    )
    code = "import sys\nfrom callbridge._cli import main\nresult = main(sys.argv[1:])\n" + REPORT
    report = run_python(code, framework_stubs, "check", str(config))
    assert report == {"frameworks": [], "result": 0}


def test_python_m_callbridge_check_imports_no_framework(
    framework_stubs: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("custom_callbacks: [log, early_stopping]\n", encoding="utf-8")
    env = subprocess_env()
    env["PYTHONPATH"] = f"{framework_stubs}:{env['PYTHONPATH']}"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "callbridge", "check", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, f"{config}: ok (2 callbacks)\n")
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "callbridge._cli" in imported  # the trace is real
    assert [m for m in imported if m.split(".")[0] in FRAMEWORKS] == []
