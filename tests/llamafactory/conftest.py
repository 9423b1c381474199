"""LLaMA-Factory suite: a tiny Llama and tokenizer built here, the company packages, servers.

Runs where ``llamafactory`` is installed (``nox -s llamafactory``); elsewhere the folder
is skipped whole, saying so. Training runs in this process through the Python call
(``callbridge_lf.run_exp``) and in child processes through the command (``callbridge-lf``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


# A submodule: with tests/ on sys.path, this very folder would pass for a `llamafactory`
# namespace package where LLaMA-Factory is not installed.
LLAMAFACTORY = _installed("llamafactory.hparams") and _installed("callbridge_lf")
if not LLAMAFACTORY:
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header() -> str | None:
    if LLAMAFACTORY:
        return None
    return (
        "tests/llamafactory: not collected, LLaMA-Factory or callbridge-llamafactory is not "
        "installed; nox -s 'tests(llamafactory)' runs them"
    )


HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
COMPANY = HERE / "company"  # the reference document's package names
ACME = ROOT / "examples" / "company"  # the implementations behind them
STANDIN = HERE / "standin"  # torchaudio, see standin/torchaudio/__init__.py
EXAMPLE = ROOT / "examples" / "llamafactory"  # tiny_llama.py builds the model and data
for folder in (COMPANY, ACME, EXAMPLE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from tiny_llama import make_workspace  # noqa: E402

from support.receiver import Server, serving  # noqa: E402 - after the path setup above

BASE = """\
### model
model_name_or_path: {model}

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 4
lora_target: all

### dataset
dataset: {dataset}
dataset_dir: {dataset_dir}
template: default
cutoff_len: 64
overwrite_cache: true
preprocessing_num_workers: 1

### output
output_dir: {output_dir}
logging_steps: 2
save_strategy: "no"
report_to: none
plot_loss: false
disable_tqdm: true

### train
per_device_train_batch_size: 4
learning_rate: 1.0e-3
max_steps: 6
use_cpu: true
seed: 0

### eval
val_size: 0.25
eval_strategy: steps
eval_steps: 3
per_device_eval_batch_size: 4
"""


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny model, tokenizer and dataset, built once per session (no hub)."""
    return make_workspace(tmp_path_factory.mktemp("lf-workspace"))


@pytest.fixture
def training_yaml(workspace: dict[str, str], tmp_path: Path) -> Callable[..., Path]:
    """Write ``train.yaml``: the base LLaMA-Factory keys, then ``callbacks`` (YAML text)."""

    def write(callbacks: str = "", *, name: str = "train.yaml", **keys: Any) -> Path:
        lines = BASE.format(output_dir=tmp_path / "out", **workspace).splitlines()
        for key, value in keys.items():
            line = f"{key}: {value}"
            at = [i for i, old in enumerate(lines) if old.startswith(f"{key}:")]
            if at:
                lines[at[0]] = line  # a base key given again replaces the base's value
            else:
                lines.append(line)
        text = "\n".join(lines) + "\n"
        path = tmp_path / name
        path.write_text(text + "\n" + callbacks, encoding="utf-8")
        return path

    return write


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    yield from serving()


def child_env(**extra: str) -> dict[str, str]:
    """A ``callbridge-lf`` process's environment: the company packages importable, offline."""
    env = dict(os.environ)
    paths = [str(COMPANY), str(ACME), str(ROOT / "tests"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
