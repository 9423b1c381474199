"""examples/llamafactory, run as its train.yaml documents it, from the repository root.

``python examples/llamafactory/tiny_llama.py`` then ``callbridge-lf train
examples/llamafactory/train.yaml`` with ``EARLY_STOPPING_PATIENCE`` from the environment;
the paths (and, to keep it short, max_steps) are overridden on the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import ROOT, child_env


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_example_trains_with_its_yaml_callbacks(tmp_path: Path) -> None:
    base, out = tmp_path / "base", tmp_path / "sft"
    subprocess.run(
        [sys.executable, "examples/llamafactory/tiny_llama.py", "--out", str(base)],
        cwd=ROOT, env=child_env(), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("callbridge-lf")), "train",
            "examples/llamafactory/train.yaml",
            f"model_name_or_path={base / 'model'}", f"dataset_dir={base / 'data'}",
            f"output_dir={out}", "max_steps=10",
        ],
        cwd=ROOT, env=child_env(EARLY_STOPPING_PATIENCE="5"), capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # log's lines are printed under LLaMA-Factory's logging setup too.
    printed = done.stdout + done.stderr
    assert "[hf stage=sft] step 0/10 epoch 0.00 train_begin" in printed
    assert "[hf stage=sft] step 10/10 epoch" in printed

    events = read_jsonl(out / "metrics.jsonl")
    assert (events[0]["event"], events[-1]["event"]) == ("train_begin", "evaluate")
    assert [e["step"] for e in events if e["event"] == "train_end"] == [10]
    assert [e["step"] for e in events if e["event"] == "log" and "loss" in e] == [5, 10]
    assert all(e["tags"] == {"stage": "sft"} for e in events)  # metrics' stage
    assert all("steps_per_second" in e for e in events if e["event"] == "log" and "loss" in e)
    generations = read_jsonl(out / "generations.jsonl")
    assert [g["step"] for g in generations] == [10, 10]  # and LLaMA-Factory's final one
    assert all(0 < g["metrics"]["eval_gen_tokens"] <= 8 for g in generations)  # max_new_tokens
    assert len(read_jsonl(out / "predictions.jsonl")) == 8
    assert (out / "adapter_model.safetensors").is_file()
