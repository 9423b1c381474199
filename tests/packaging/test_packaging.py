"""The three distributions as a user gets them: built, checked, installed from their wheels.

The wheels and sdists are built once (``python -m build --no-isolation``: the hatchling
of this venv, pinned) and checked with ``twine check --strict``; the sdists must hold the
package and nothing else. A fresh venv then gets torch first (the pinned CPU build, as
``constraints.txt`` says) and the three wheels, and a user's own project
(``tests/fixtures/first_project``: a callback module beside ``train.py``) is copied to a
temporary folder, checked with its ``callbridge check`` and trained from there under the
HF Trainer and under Lightning. The suite needs only build, twine and hatchling around it
(``nox -s "tests(packaging)"``); it creates the venv it installs into.

Set ``CALLBRIDGE_DIST_DIR`` to build into (and reuse) a folder of your own.
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from pathlib import Path

import pytest

# The tools this suite drives (nox -s "tests(packaging)" installs them, pinned).
pytest.importorskip("build", reason="the packaging suite needs build, twine and hatchling")
pytest.importorskip("twine", reason="the packaging suite needs build, twine and hatchling")
pytest.importorskip("hatchling", reason="the packaging suite needs build, twine and hatchling")

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
PROJECT = ROOT / "tests" / "fixtures" / "first_project"
#: distribution -> (its folder, its import package)
DISTRIBUTIONS = {
    "callbridge": (ROOT, "callbridge"),
    "callbridge-hf": (ROOT / "adapters" / "hf", "callbridge_hf"),
    "callbridge-lightning": (ROOT / "adapters" / "lightning", "callbridge_lightning"),
}
#: Built and checked as the others, but not installed in the user's venv: it pulls in
#: LLaMA-Factory, whose own session (tests/llamafactory) installs and trains it.
PUBLISHED = {
    **DISTRIBUTIONS,
    "callbridge-llamafactory": (ROOT / "adapters" / "llamafactory", "callbridge_lf"),
}
#: What an sdist may hold beside its package: the metadata and the files it builds from.
SDIST_EXTRAS = {
    "pyproject.toml",
    "PKG-INFO",
    "LICENSE",
    "README.md",
    "README.pypi.md",
    ".gitignore",
}


def run(command: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(command)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout + proc.stderr


def artefact_name(dist: str) -> str:
    return dist.replace("-", "_")


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The eight artefacts, built from this checkout."""
    named = os.environ.get("CALLBRIDGE_DIST_DIR")
    out = Path(named) if named else tmp_path_factory.mktemp("dist")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("callbridge*"):
        old.unlink()
    for folder, _ in PUBLISHED.values():
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(folder)])
    return out


def artefacts(dist_dir: Path, dist: str) -> tuple[Path, Path]:
    (wheel,) = dist_dir.glob(f"{artefact_name(dist)}-*-py3-none-any.whl")
    (sdist,) = dist_dir.glob(f"{artefact_name(dist)}-*.tar.gz")
    return wheel, sdist


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_twine_check_strict_passes_for_every_wheel_and_sdist(dist_dir: Path) -> None:
    files = sorted(str(p) for p in dist_dir.iterdir())
    assert len(files) == 2 * len(PUBLISHED), files
    output = run([sys.executable, "-m", "twine", "check", "--strict", *files])
    assert output.count("PASSED") == 2 * len(PUBLISHED), output
    assert "WARNING" not in output


@pytest.mark.parametrize("dist", PUBLISHED)
def test_the_sdist_holds_the_package_and_its_metadata_only(dist_dir: Path, dist: str) -> None:
    """No run outputs (runs/, saves/, weights), tests, CI, examples or other distributions."""
    _, sdist = artefacts(dist_dir, dist)
    package = PUBLISHED[dist][1]
    with tarfile.open(sdist) as archive:
        names = [m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()]
    strays = [n for n in names if not n.startswith(f"src/{package}/") and n not in SDIST_EXTRAS]
    assert strays == []
    assert {"LICENSE", "pyproject.toml", "PKG-INFO", f"src/{package}/py.typed"} <= set(names)
    forbidden = re.compile(
        r"(^|/)(tests?|\.ci|\.github|runs|saves|examples|adapters)/|\.(pt|safetensors|sqlite)$"
    )
    assert [n for n in names if forbidden.search(n)] == []


@pytest.mark.parametrize("dist", PUBLISHED)
def test_the_metadata_reads_well_on_a_package_index(dist_dir: Path, dist: str) -> None:
    wheel, _ = artefacts(dist_dir, dist)
    meta = wheel_metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload()
    assert isinstance(description, str)
    assert description.startswith(f"# {dist}\n")
    # Every link absolute: relative ones break on the index's page.
    links = re.findall(r"\]\(([^)]+)\)", description)
    assert links
    assert [link for link in links if not link.startswith("https://")] == []
    assert f"pip install {dist}" in description


def test_the_adapters_declare_what_their_first_real_use_needs_with_tested_bounds(
    dist_dir: Path,
) -> None:
    """Every framework bounded above and below, CI's pins (constraints.txt) inside the bounds."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def pins_of(path: Path) -> dict[str, str]:
        return {
            canonicalize_name(name): version.split()[0]
            for name, _, version in (
                line.partition("==")
                for line in path.read_text(encoding="utf-8").splitlines()
                if "==" in line and not line.startswith("#") and ";" not in line
            )
        }

    declared: dict[str, Requirement] = {}
    for dist in ("callbridge-hf", "callbridge-lightning", "callbridge-llamafactory"):
        meta = wheel_metadata(artefacts(dist_dir, dist)[0])
        for line in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            declared[canonicalize_name(requirement.name)] = requirement
    # The HF Trainer refuses to start without accelerate (">= 1.1.0").
    assert "accelerate" in declared
    frameworks = ("transformers", "trl", "accelerate", "lightning", "jsonargparse", "llamafactory")
    for name in frameworks:
        specifiers = {spec.operator for spec in declared[name].specifier}
        assert {">=", "<"} <= specifiers, declared[name]
    # Both lines CI runs: the main pins, and the older one the LLaMA-Factory session proves.
    for constraints in (CONSTRAINTS, ROOT / "constraints-llamafactory.txt"):
        pins = pins_of(constraints)
        for name, requirement in declared.items():
            if name in pins and name != "torch":  # "+cpu": a local build of the same version
                assert requirement.specifier.contains(pins[name]), (constraints.name, requirement)


@pytest.fixture(scope="module")
def user_venv(dist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with torch (first, alone) and the three wheels, under the pins.

    Left to pytest's temporary-folder retention, not removed here: deleting 25,000 files
    took 90 s on a busy disk, more than making them.
    """
    venv = tmp_path_factory.mktemp("venv") / "user"
    run([sys.executable, "-m", "venv", str(venv)])
    # --no-compile: a user's first imports compile what they use, not all of torch.
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    pip += ["-c", str(CONSTRAINTS)]
    run([*pip, "torch"])
    wheels = [str(artefacts(dist_dir, dist)[0]) for dist in DISTRIBUTIONS]
    run([*pip, *wheels])
    return venv


def user_env(venv: Path) -> dict[str, str]:
    """A user's shell with the venv activated: nothing of this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["HF_HUB_OFFLINE"] = "1"  # tiny models built in code: nothing is downloaded
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "my-project"
    shutil.copytree(PROJECT, folder)
    return folder


def test_callbridge_check_and_version_from_the_users_project(
    user_venv: Path, project: Path
) -> None:
    env = user_env(user_venv)
    # The console script: the project's folder is not on its path unless callbridge puts it.
    check = run(["callbridge", "check", "pyproject.toml"], cwd=project, env=env)
    assert check.splitlines()[0] == "pyproject.toml: ok (2 callbacks)"
    versions = run(["callbridge", "--version"], cwd=project, env=env).splitlines()
    assert [line.split()[0] for line in versions] == list(DISTRIBUTIONS)
    where = run(
        ["python", "-c", "import callbridge; print(callbridge.__file__)"], cwd=project, env=env
    )
    assert str(user_venv) in where  # the installed wheel, not this checkout


@pytest.mark.parametrize("trainer", ["hf", "lightning"])
def test_a_tiny_training_from_the_users_project_runs_its_own_callback(
    user_venv: Path, project: Path, trainer: str
) -> None:
    output = run(["python", "train.py", "--trainer", trainer], cwd=project, env=user_env(user_venv))
    assert "callbridge: 2 callbacks loaded, 0 disabled, 0 failed" in output
    tally = json.loads((project / "runs" / "first" / "tally.json").read_text(encoding="utf-8"))
    assert tally == {
        "label": "first",
        "train_begin": 1,
        "step_end": 4,
        "evaluate": 2,
        "train_end": 1,
    }
