"""A Hugging Face ``Trainer`` run whose callbacks come from ``pyproject.toml``.

Run it (CPU, nothing downloaded; 1-2 minutes on a 2-core machine, 101 s measured on a busy one)::

    pip install ./ ./adapters/hf          # callbridge and callbridge-hf
    python examples/hf/train.py --out runs/hf

What it shows: the training script names no callback. ``callbridge_hf.attach`` reads
``[tool.callbacks]`` from the ``pyproject.toml`` beside this file and adds, in order,
``metrics`` (step time, throughput, memory in the logs), ``log`` (every log and evaluation,
also as JSON lines), ``early_stopping`` (on ``eval_loss``), ``bema`` (weight averaging) and
``reporter`` (a JSON summary). The model is a 2-layer GPT-2 built from a ``GPT2Config``;
the data are counting sequences (``5 6 7 8 ...``) generated in code, which the model learns
in a few dozen steps, so early stopping ends the run well before ``--max-steps``.

Afterwards ``--out`` holds:

- ``metrics.jsonl``: one JSON object per event (``train_begin``, ``log``, ``evaluate``, ...);
- ``callbridge_report.json``: ``status`` ("stopped" when early stopping ended the run),
  the best ``eval_loss`` and its step, the final metrics;
- ``bema/``: the averaged weights, loadable with ``GPT2LMHeadModel.from_pretrained``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import callbridge_hf

CONFIG = Path(__file__).resolve().with_name("pyproject.toml")
VOCAB_SIZE = 32
SEQ_LEN = 16


def counting_sequences(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` sequences ``s, s+1, s+2, ...`` (mod the vocabulary) from random starts ``s``."""
    starts = torch.randint(0, VOCAB_SIZE, (n, 1), generator=torch.Generator().manual_seed(seed))
    ids = (starts + torch.arange(SEQ_LEN)) % VOCAB_SIZE
    # A causal LM's labels are its inputs: the model shifts them by one itself.
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hf", help="output directory (default: runs/hf)")
    parser.add_argument("--max-steps", type=int, default=300, help="upper bound on steps")
    options = parser.parse_args()

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB_SIZE, n_positions=SEQ_LEN)
    )
    args = TrainingArguments(
        output_dir=options.out,
        max_steps=options.max_steps,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=counting_sequences(256, seed=0),
        eval_dataset=counting_sequences(32, seed=1),
    )
    # The one callbridge line: the callbacks of pyproject.toml join the trainer.
    callbridge_hf.attach(trainer, CONFIG)
    trainer.train()
    print(f"done at step {trainer.state.global_step}; see {Path(options.out).resolve()}")


if __name__ == "__main__":
    main()
