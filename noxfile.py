"""Sessions for callbridge: ``nox`` runs every test suite, ``nox -l`` lists the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# 2025.10.14 added download_python; parametrising `python` with ids needs nothing newer.
nox.needs_version = ">=2025.10.14"
# pip, not uv: the CPU torch wheel lives in pip's find-links, which uv does not read.
nox.options.default_venv_backend = "virtualenv"
# Only the interpreters found below are used; never fetch one behind the user's back.
nox.options.download_python = "never"
nox.options.sessions = ["tests"]
nox.options.error_on_external_run = True
# Reusing venvs is safe here: every session (and each parametrisation) owns its venv,
# pip rebuilds the local projects on every run, every other package is pinned by the
# constraints file (a changed pin is re-resolved), and CI runs from a fresh clone
# where there is nothing to reuse. `nox --reuse-venv=no` starts afresh.
nox.options.reuse_venv = "yes"

PYPROJECT = nox.project.load_toml("pyproject.toml")
CONSTRAINTS = ("-c", "constraints.txt")
TORCH_PYTHON = "3.11"  # the only Python with a torch build here (see constraints.txt)
TEST_DEPS = ("pytest", "hypothesis")
# Each adapter: its folder with the extras its tests use.
ADAPTERS = {"hf": "./adapters/hf[trl]", "lightning": "./adapters/lightning[cli]"}
# Each adapter suite: the adapters it installs and its test folder.
ADAPTER_SUITES = {
    "hf": (("hf",), "tests/hf"),
    "lightning": (("lightning",), "tests/lightning"),
    "all": (("hf", "lightning"), "tests/cross"),
    # The event contract: one recorder under the Driver, HF and Lightning (docs/events.md).
    "conformance": (("hf", "lightning"), "tests/conformance"),
}
# Packages a suite tests against beyond the adapters' own (tensorboardX: a real report_to
# integration under HF; rich: the progress bar under Lightning, whose extras do not bring
# it; peft: BEMA on a LoRA model and the LLaMA-Factory example; matplotlib: the
# quickstart's plot).
SUITE_EXTRAS = {
    "hf": ("tensorboardX",),
    "lightning": ("rich",),
    "all": ("peft", "matplotlib"),
}
LINT_PATHS = ("src", "adapters", "tests", "benchmarks", "examples", "noxfile.py")
# This repository's distributions: always installed from their folders, never an index.
LOCAL_DISTS = {"callbridge", "callbridge-hf", "callbridge-lightning"}


def _present(python: str) -> bool:
    """Whether ``python3.X`` is on PATH and starts.

    pyenv puts a shim for every installed version on PATH, but a shim whose version
    is not selected only prints an error, so finding the file is not enough.
    """
    exe = shutil.which(f"python{python}")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-c", ""], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


CORE_PYTHONS = [
    v for v in nox.project.python_versions(PYPROJECT, max_version="3.13") if _present(v)
]

# (python, suite): the core alone wherever it runs, then the adapters on the torch Python.
SUITES = [
    *(nox.param(v, "core", id=f"core-{v}") for v in CORE_PYTHONS),
    nox.param(TORCH_PYTHON, "hf", id="hf"),
    nox.param(TORCH_PYTHON, "lightning", id="lightning"),
    nox.param(TORCH_PYTHON, "all", id="all"),
    nox.param(TORCH_PYTHON, "conformance", id="conformance"),
    # The three distributions built, checked and installed from their wheels in a fresh
    # venv of the test's own, as a user installs them (tests/packaging).
    nox.param(TORCH_PYTHON, "packaging", id="packaging"),
    # The real LLaMA-Factory 0.9.5 on its own pins (constraints-llamafactory.txt): its line
    # of transformers/TRL, callbridge-lf, and the docs' LLaMA-Factory blocks.
    nox.param(TORCH_PYTHON, "llamafactory", id="llamafactory"),
]
# What the packaging suite's own venv needs: the test makes the venv it installs into.
PACKAGING_DEPS = ("build", "twine", "hatchling", "pytest")

# LLaMA-Factory's line: pins of its own, never mixed with constraints.txt (it needs
# transformers<=5.6.0, trl<=0.24, peft<=0.18.1, accelerate<=1.11, datasets<=4.0).
LF_CONSTRAINTS = ("-c", "constraints-llamafactory.txt")
LF_DIST = "llamafactory==0.9.5"
# llamafactory requires torchvision and torchaudio, but the only wheels of them here are
# CUDA builds that fail to load with torch 2.13.0+cpu (torchvision's "operator
# torchvision::nms does not exist" then breaks `from transformers import PreTrainedModel`).
# So llamafactory is installed without dependencies, then every other requirement its own
# metadata declares, resolved under the pins. Its text training uses neither: torchvision
# is never imported on that path, and torchaudio, imported at module level for audio
# datasets only (llamafactory/data/mm_plugin.py), gets a stand-in on PYTHONPATH whose every
# function raises saying why (tests/llamafactory/standin/torchaudio). No test trains on audio.
LF_LEFT_OUT = ("torchvision", "torchaudio")
LF_STANDIN = "tests/llamafactory/standin"
# Prints llamafactory's requirements (no extras), one per line, less LF_LEFT_OUT.
_LF_REQUIREMENTS = (
    "import importlib.metadata as m, re, sys; "
    "left = set(sys.argv[1:]); "
    "reqs = [r for r in m.requires('llamafactory') or [] if 'extra ==' not in r]; "
    "print('\\n'.join(r for r in reqs if re.split(r'[<>=!~ ;\\[]', r, 1)[0].lower() not in left))"
)


def _install(session: nox.Session, *packages: str, torch: bool = False) -> None:
    """Install ``packages`` under the pins; torch first, alone, where it is needed."""
    if torch:
        # Alone and first: any later requirement then finds torch satisfied.
        session.install(*CONSTRAINTS, "torch")
    session.install(*CONSTRAINTS, *packages)


@nox.session
@nox.parametrize(("python", "suite"), SUITES)
def tests(session: nox.Session, suite: str) -> None:
    """Run a test suite: the core on each Python, HF, Lightning, both, packaging, LLaMA-Factory."""
    if suite == "core":
        _install(session, ".[monitor]", *TEST_DEPS)
        session.run("pytest", "tests/core", *session.posargs)
        return
    if suite == "packaging":
        _install(session, *PACKAGING_DEPS)
        session.run("pytest", "tests/packaging", *session.posargs)
        return
    if suite == "llamafactory":
        _llamafactory(session)
        return
    adapters, folder = ADAPTER_SUITES[suite]
    extras = SUITE_EXTRAS.get(suite, ())
    _install(
        session, ".[monitor]", *(ADAPTERS[a] for a in adapters), *extras, *TEST_DEPS, torch=True
    )
    # Tiny models are built in code: a test that reaches for the Hub fails at once.
    session.env["HF_HUB_OFFLINE"] = "1"
    # The packaging is proved even before a suite has tests.
    session.run("python", "-c", "; ".join(f"import callbridge_{a}" for a in adapters))
    session.run("pytest", folder, *session.posargs)


def _llamafactory(session: nox.Session) -> None:
    """The llamafactory suite: LLaMA-Factory 0.9.5 as a user installs it, less what cannot load."""
    session.install(*LF_CONSTRAINTS, "torch")  # alone and first, as every torch session
    session.install(*LF_CONSTRAINTS, "--no-deps", LF_DIST)  # see LF_LEFT_OUT
    listed = session.run("python", "-c", _LF_REQUIREMENTS, *LF_LEFT_OUT, silent=True, log=False)
    requirements = [line for line in str(listed or "").splitlines() if line.strip()]
    session.install(*LF_CONSTRAINTS, *requirements, ".[monitor]", "./adapters/hf", "pytest")
    # Its dependency on llamafactory is satisfied above; --no-deps keeps pip from
    # resolving llamafactory's own requirements again (torchvision, torchaudio).
    session.install(*LF_CONSTRAINTS, "--no-deps", "./adapters/llamafactory")
    session.env["PYTHONPATH"] = str(Path(LF_STANDIN).resolve())
    session.env["HF_HUB_OFFLINE"] = "1"  # the tiny Llama is built by the tests
    session.run("python", "-c", "import callbridge_lf, llamafactory.train.tuner")
    session.run("pytest", "tests/llamafactory", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    _install(session, "ruff")
    paths = session.posargs or [p for p in LINT_PATHS if Path(p).exists()]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=TORCH_PYTHON)
def typing(session: nox.Session) -> None:
    """Check types with mypy (strict) on the core and both adapters."""
    # tomli: mypy checks the Python 3.10 branch of the TOML import too.
    _install(session, ".[monitor]", *ADAPTERS.values(), "mypy", "types-PyYAML", "tomli", torch=True)
    session.run("mypy", *session.posargs)


def _script_dependencies(script: Path) -> list[str]:
    """What a script needs beyond this repository, from its PEP 723 block if it has one."""
    if "# /// script" not in script.read_text(encoding="utf-8"):
        return []
    deps: list[str] = nox.project.load_toml(script).get("dependencies", [])
    return [d for d in deps if canonicalize_name(Requirement(d).name) not in LOCAL_DISTS]


@nox.session(python=TORCH_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks (all, or the scripts named in posargs); each prints its ratios."""
    named = [a for a in session.posargs if a.endswith(".py")]
    args = [a for a in session.posargs if not a.endswith(".py")]
    scripts = [Path(s) for s in named] or sorted(Path("benchmarks").glob("*.py"))
    # Benchmarks hold the adapters against native callbacks, so both are always there.
    extra = sorted({dep for script in scripts for dep in _script_dependencies(script)})
    _install(session, ".", *ADAPTERS.values(), *extra, torch=True)
    for script in scripts:
        session.run("python", str(script), *args)


@nox.session(python=TORCH_PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """Run the quickstart: one pyproject.toml under the HF Trainer and Lightning, plotted."""
    _install(session, ".[monitor]", *ADAPTERS.values(), "matplotlib", torch=True)
    examples = Path("examples").resolve()
    quickstart = examples / "quickstart"
    # The company package and the quickstart's own callback importable by their dotted
    # names; stand-ins for the variables the configs require (the quickstart sets its own).
    env = {
        "PYTHONPATH": os.pathsep.join([str(examples / "company"), str(quickstart)]),
        "HF_HUB_OFFLINE": "1",  # tiny models built in code: nothing is downloaded
        "ACME_MONITOR_URL": "http://127.0.0.1:8080/ingest",
        "ACME_KEY": "demo-key",
    }
    # Validated first, without training (what CI or a pre-commit hook runs): the
    # quickstart's table, then the repository's and the other examples' callback configs.
    first = quickstart / "pyproject.toml"
    configs = {
        *examples.glob("*/pyproject.toml"),
        *examples.glob("*/callbacks.*"),
        examples / "llamafactory" / "train.yaml",  # a training YAML holding custom_callbacks
    }
    others = sorted(configs - {first})
    session.run("callbridge", "check", str(first), "pyproject.toml", *map(str, others), env=env)
    session.run("callbridge", "show", str(first), env=env)
    out = Path(".demo").resolve()  # git-ignored; posargs go to the script (e.g. --steps 60)
    session.run(
        "python", str(quickstart / "quickstart.py"), "--out", str(out), *session.posargs, env=env
    )
