"""The code blocks of README.md and docs/*.md are true: each one runs, or is marked as a fragment.

One test per fenced block, named ``<file>:L<line of the fence>``:

* ```` ```python ````: the blocks of one file run in order in one namespace, in a
  temporary working directory of that file, with ``examples/company`` on ``sys.path``,
  in a copy of the default registry (names a block registers stay with its file) and
  with the environment variables the file's blocks set.
* ```` ```toml ```` / ```` ```yaml ```` that hold callbridge keys (``custom_callbacks``
  or ``[tool.callbacks]``): written to a file (``pyproject.toml`` when the block has a
  ``[tool.callbacks]`` table) and validated as ``callbridge check`` does, in the file's
  registry. A ``${VAR}`` without a default that is unset gets a placeholder value: the
  block documents a variable the reader sets.
* ```` ```bash ````: each line that is a plain ``callbridge list|check|show`` command
  (leading ``VAR=value`` assignments allowed) whose files exist runs from the repository
  root; a trailing comment ``# ... exit N`` gives the expected exit status (else 0). So does
  each ``callbridge-lf check`` line where LLaMA-Factory is installed (the llamafactory
  suite runs them: tests/llamafactory/test_lf_docs.py); elsewhere the block is skipped,
  saying so.

Other blocks, and toml/yaml/bash blocks with nothing of the above, are skipped with the
reason. A block that is a fragment, not meant to run, says so on the line just before
its fence: ``<!-- not run: <reason> -->``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import linecache
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import callbridge
from callbridge import Registry
from callbridge._registry import use_registry

ROOT = Path(__file__).resolve().parents[2]
COMPANY = ROOT / "examples" / "company"
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(.+?)\s*-->\s*$")
_REQUIRED_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_EXIT = re.compile(r"#.*?\bexits?\s+(\d)\b")
_CALLBRIDGE_KEYS = re.compile(r"custom_callbacks|\[tool\.callbacks")


class Block:
    """One fenced code block of a Markdown file."""

    def __init__(self, path: Path, line: int, lang: str, text: str, not_run: str | None) -> None:
        self.path = path
        self.line = line  # 1-based line of the opening fence
        self.lang = lang
        self.text = text
        self.not_run = not_run

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:L{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the marker on the line before its fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        marker = _NOT_RUN.match(lines[start - 1]) if start > 0 else None
        found.append(
            Block(path, start + 1, lang.lower(), "\n".join(body) + "\n", marker and marker[1])
        )
    return found


ALL_BLOCKS = [block for path in FILES if path.is_file() for block in blocks_of(path)]


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        env.clear()
        env.update(os.environ)
        os.environ.clear()
        os.environ.update(saved)


class FileSession:
    """What the blocks of one file share: namespace, working directory, registry, environment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blocks = [b for b in ALL_BLOCKS if b.path == path]
        self.namespace: dict[str, Any] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
        self.workdir = Path(tempfile.mkdtemp(prefix=f"callbridge-docs-{path.stem}-"))
        self.registry: Registry = callbridge.default_registry().copy()
        self.env = dict(os.environ)
        self.results: dict[int, BaseException | None] = {}

    def python_blocks_before(self, block: Block) -> list[Block]:
        return [
            b
            for b in self.blocks
            if b.lang == "python" and b.not_run is None and b.line < block.line
        ]

    def run_python(self, block: Block) -> None:
        """Run ``block`` after every earlier python block of the file (each runs once)."""
        for earlier in self.python_blocks_before(block):
            self._run_once(earlier)
        error = self._run_once(block)
        if error is not None:
            raise error

    def _run_once(self, block: Block) -> BaseException | None:
        if block.line in self.results:
            return self.results[block.line]
        code = compile(block.text, block.id, "exec")
        lines = block.text.splitlines(keepends=True)
        linecache.cache[block.id] = (len(block.text), None, lines, block.id)  # tracebacks show it
        previous_cwd = os.getcwd()
        added = str(COMPANY) not in sys.path
        if added:
            sys.path.insert(0, str(COMPANY))
        error: BaseException | None = None
        try:
            os.chdir(self.workdir)
            with _environment(self.env), use_registry(self.registry):
                exec(code, self.namespace)
        except BaseException as exc:  # noqa: BLE001 - recorded, re-raised by the block's own test
            error = exc
        finally:
            os.chdir(previous_cwd)
            if added:
                sys.path.remove(str(COMPANY))
        self.results[block.line] = error
        return error


_SESSIONS: dict[Path, FileSession] = {}


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    for session in _SESSIONS.values():
        shutil.rmtree(session.workdir, ignore_errors=True)
    _SESSIONS.clear()


def session_of(path: Path) -> FileSession:
    if path not in _SESSIONS:
        _SESSIONS[path] = FileSession(path)
    return _SESSIONS[path]


def _placeholders(text: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` plus a placeholder for each required ``${VAR}`` of ``text`` that is unset."""
    out = dict(env)
    for name in _REQUIRED_VAR.findall(text):
        if not out.get(name):
            out[name] = f"placeholder-{name.lower()}"
    return out


def check_config(block: Block) -> None:
    session = session_of(block.path)
    for earlier in session.python_blocks_before(block):
        session._run_once(earlier)  # names they register belong to the file's registry
    if block.lang == "toml":
        name = "pyproject.toml" if "[tool.callbacks" in block.text else "callbacks.toml"
    else:
        name = "callbacks.yaml"
    folder = Path(tempfile.mkdtemp(prefix="callbridge-docs-block-", dir=session.workdir))
    path = folder / name
    path.write_text(block.text, encoding="utf-8")
    environ = _placeholders(block.text, session.env)
    sys.path.insert(0, str(COMPANY))
    try:
        problems = callbridge.check(str(path), registry=session.registry, environ=environ)
    finally:
        sys.path.remove(str(COMPANY))
    assert not problems, f"{block.id}: `callbridge check` finds:\n" + "\n".join(
        f"  {p}" for p in problems
    )


def cli_commands(block: Block) -> list[tuple[list[str], dict[str, str], int, str]]:
    """The plain ``callbridge list|check|show`` and ``callbridge-lf check`` lines on existing files.

    Each is ``(argv, env, expected status, line)``; a ``callbridge-lf`` line's argv starts
    with ``callbridge-lf``, a ``callbridge`` line's with the subcommand.
    """
    commands = []
    for raw in block.text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        expected = _EXIT.search(line)
        code = line.split(" #", 1)[0].strip()
        if any(c in code for c in "|&;<>$`(") or "..." in code:
            continue
        try:
            words = shlex.split(code)
        except ValueError:
            continue
        env: dict[str, str] = {}
        while words and _ASSIGNMENT.match(words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words[:3] == ["python", "-m", "callbridge"]:
            words = ["callbridge", *words[3:]]
        if words[:2] == ["callbridge-lf", "check"]:
            files = [w for w in words[2:] if "=" not in w and not w.startswith("-")]
            if files and all((ROOT / f).is_file() for f in files):
                commands.append((words, env, int(expected[1]) if expected else 0, line))
            continue
        if len(words) < 2 or words[0] != "callbridge" or words[1] not in ("list", "check", "show"):
            continue
        files = [w for w in words[2:] if not w.startswith("-")]
        if words[1] != "list" and (not files or not all((ROOT / f).is_file() for f in files)):
            continue
        commands.append((words[1:], env, int(expected[1]) if expected else 0, line))
    return commands


def run_cli(block: Block) -> None:
    commands = cli_commands(block)
    assert commands
    pythonpath = [
        str(ROOT / "src"),
        str(ROOT / "adapters" / "hf" / "src"),
        str(ROOT / "adapters" / "lightning" / "src"),
        str(COMPANY),
    ]
    for argv, assignments, expected, line in commands:
        program = ["callbridge"]
        if argv[0] == "callbridge-lf":
            if importlib.util.find_spec("callbridge_lf") is None:
                pytest.skip(
                    f"{block.id}: `{line}` needs LLaMA-Factory and callbridge-llamafactory; "
                    "nox -s 'tests(llamafactory)' runs it"
                )
            program, argv = ["callbridge_lf"], argv[1:]
        files = [ROOT / f for f in argv[1:] if not f.startswith("-") and "=" not in f]
        text = "".join(f.read_text(encoding="utf-8") for f in files if f.is_file())
        env = _placeholders(text, {**os.environ, **assignments})
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
        done = subprocess.run(
            [sys.executable, "-m", *program, *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == expected, (
            f"{block.id}: `{line}` exited {done.returncode}, expected {expected}\n"
            f"{done.stdout}{done.stderr}"
        )


def _skip_reason(block: Block) -> str | None:
    if block.not_run is not None:
        return f"marked not run: {block.not_run}"
    if block.lang == "python":
        return None
    if block.lang in ("toml", "yaml", "yml"):
        return None if _CALLBRIDGE_KEYS.search(block.text) else "holds no callbridge keys"
    if block.lang in ("bash", "sh", "console", "shell"):
        if cli_commands(block):
            return None
        return "no plain callbridge list/check/show or callbridge-lf check line"
    return f"{block.lang or 'untagged'} block: nothing to run"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_block(block: Block) -> None:
    """A block runs (python), validates (toml/yaml) or its commands exit as documented (bash)."""
    reason = _skip_reason(block)
    if reason is not None:
        pytest.skip(f"{block.id}: {reason}")
    if block.lang == "python":
        session_of(block.path).run_python(block)
    elif block.lang in ("toml", "yaml", "yml"):
        check_config(block)
    else:
        run_cli(block)


def test_docs_exist() -> None:
    """The documentation set is there, with an index."""
    for name in (
        "README.md",
        "writing-callbacks.md",
        "configuration.md",
        "events.md",
        "cli.md",
        "security.md",
        "migration.md",
        "benchmarks.md",
    ):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name} is missing"


def test_markers_precede_fences() -> None:
    """A ``not run`` marker sits on the line just before a fence, never elsewhere."""
    for path in FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if _NOT_RUN.match(line):
                following = lines[number] if number < len(lines) else ""
                assert _FENCE.match(following), (
                    f"{path.relative_to(ROOT)}:L{number}: a `not run` marker must sit on the "
                    "line just before a code fence"
                )
