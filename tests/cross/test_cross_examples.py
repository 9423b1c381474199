"""The runnable examples (``examples/*``), each run as its docstring documents it.

Each test starts the example in a fresh Python, from the repository root, with the
environment a user has after installing callbridge and its adapters (here the test
environment's own, ``PYTHONPATH`` made absolute, the hub offline), with ``--out`` in a
temporary directory and, where the run would be longer than needed, fewer steps. The
asserts read what the run leaves behind: reports, JSON lines, saved weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """``python ARGS`` from the repository root; fails with the output unless it exits 0."""
    child_env = dict(os.environ)
    entries = [str(Path(p).resolve()) for p in child_env.get("PYTHONPATH", "").split(os.pathsep)]
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in entries if p)
    child_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    child_env.update(env or {})
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"python {' '.join(args)} exited {done.returncode}\n{done.stdout}"
    return done.stdout


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def report(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "callbridge_report.json").read_text("utf-8"))
    return data


def test_hf_trainer_example_stops_early_and_writes_jsonl_report_and_bema(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "hf"

    run_example("examples/hf/train.py", "--out", str(out))

    summary = report(out)
    assert summary["framework"] == "hf"
    assert summary["status"] == "stopped"  # early stopping, before --max-steps (300)
    assert summary["global_step"] < summary["max_steps"] == 300
    assert summary["best"]["metric"] == "eval_loss"
    assert summary["evaluations"] >= 3
    events = jsonl(out / "metrics.jsonl")
    assert events[0]["event"] == "train_begin"
    assert events[-1]["event"] == "train_end"
    logs = [e for e in events if e["event"] == "log" and "loss" in e]
    assert logs
    # metrics runs before log in the config: log writes what metrics added.
    assert {"step", "epoch", "loss", "step_time", "samples_per_second"} <= logs[0].keys()
    assert [e["step"] for e in events if e["event"] == "evaluate"][:2] == [10, 20]
    from transformers import GPT2LMHeadModel

    averaged = GPT2LMHeadModel.from_pretrained(out / "bema")
    assert averaged.config.n_layer == 2


def test_trl_sft_example_runs_neutral_callbacks_and_trl_bema(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    out = tmp_path / "trl"

    run_example("examples/trl/train_sft.py", "--out", str(out), "--max-steps", "10")

    summary = report(out)
    assert (summary["status"], summary["global_step"]) == ("completed", 10)
    events = jsonl(out / "log.jsonl")
    assert [e["step"] for e in events if e["event"] == "log" and "loss" in e] == [5, 10]
    assert events[-1]["event"] == "train_end"
    # trl.BEMACallback, named by its import path, saved its averaged model at train end.
    assert (out / "bema" / "config.json").is_file()
    assert (out / "bema" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["examples/lightning/train.py", "--out", "{out}"], id="lightning"),
        pytest.param(
            [
                "examples/lightning_cli/main.py", "fit",
                "--config", "examples/lightning_cli/config.yaml",
                "--trainer.default_root_dir", "{out}",
            ],
            id="lightning_cli",
        ),
    ],
)  # fmt: skip
def test_lightning_examples_stop_early_and_report(tmp_path: Path, command: list[str]) -> None:
    pytest.importorskip("lightning")
    if "lightning_cli" in command[0]:
        pytest.importorskip("jsonargparse")
    out = tmp_path / "run"

    output = run_example(*(arg.format(out=out) for arg in command))
    # Each example ends with one closing line: where its step stopped, and where to look.
    assert output.rstrip().splitlines()[-1].startswith("done at step ")
    assert output.rstrip().endswith(str(out.resolve()))

    summary = report(out)
    assert summary["framework"] == "lightning"
    assert summary["status"] == "stopped"  # early stopping on val_loss, before max_steps
    assert summary["global_step"] < summary["max_steps"] == 2000
    assert summary["best"]["metric"] == "val_loss"
    events = jsonl(out / ("events.jsonl" if "lightning_cli" in command[0] else "metrics.jsonl"))
    assert (events[0]["event"], events[-1]["event"]) == ("train_begin", "train_end")
    evaluations = [e for e in events if e["event"] == "evaluate"]
    assert len(evaluations) == summary["evaluations"] >= 3
    assert all("val_loss" in e for e in evaluations)
    assert any(e["event"] == "log" and "loss" in e for e in events)
    if "lightning_cli" in command[0]:
        assert summary["stage"] == "regression"
        assert json.loads((out / "stage.json").read_text("utf-8"))["status"] == "finished"
    else:
        from safetensors.torch import load_file

        weights = load_file(out / "bema" / "model.safetensors")
        assert {"net.0.weight", "net.2.bias"} <= weights.keys()


def test_every_example_config_passes_callbridge_check() -> None:
    """`callbridge check` passes on each callbacks config of the examples, as a user runs it."""
    pytest.importorskip("trl")  # examples/trl names trl.BEMACallback
    configs = [
        "examples/hf/pyproject.toml",
        "examples/trl/callbacks.toml",
        "examples/lightning/pyproject.toml",
        "examples/lightning_cli/callbacks.yaml",
        "examples/llamafactory/train.yaml",
    ]

    output = run_example("-m", "callbridge", "check", *configs)

    assert [line.split(":")[0] for line in output.splitlines() if ": ok (" in line] == configs
