"""A LLaMA-Factory-style launcher: one training YAML for the trainer and its callbacks.

Run it (CPU, a few seconds; nothing is downloaded)::

    pip install ./ ./adapters/hf peft   # callbridge, callbridge-hf, and PEFT for the LoRA
    python examples/llamafactory/train.py examples/llamafactory/train.yaml

What it shows: the launcher reads ``train.yaml`` the way LLaMA-Factory does, with
``HfArgumentParser`` over its argument dataclasses (model, data, finetuning, training), and
leaves the callback keys (``custom_callbacks``, ``custom_callbacks_only``, ``strict``) to
callbridge, which reads the same file and ignores every other key.
``callbridge_hf.attach`` gets the parsed ``model_args``, ``data_args`` and
``finetuning_args`` as ``inject``: a callback whose constructor has a parameter of one of
those names receives the object, as LLaMA-Factory's own callbacks do. ``${VAR:-default}``
in the YAML is read from the environment (``EARLY_STOPPING_PATIENCE=5 python ...``).

``model_name_or_path: tiny-gpt2`` builds a 2-layer GPT-2 in code and ``dataset: counting``
generates counting sequences; a LoRA adapter (``finetuning_type: lora``) is trained on it.
Afterwards ``output_dir`` (``--out DIR`` overrides it) holds ``metrics.jsonl``, one JSON
object per training event.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

import callbridge_hf

TINY_VOCAB = 32


@dataclasses.dataclass
class ModelArguments:
    model_name_or_path: str
    trust_remote_code: bool = False


@dataclasses.dataclass
class DataArguments:
    dataset: str
    template: str = "default"
    cutoff_len: int = 1024
    max_samples: int | None = None
    val_size: float = 0.0
    preprocessing_num_workers: int | None = None


@dataclasses.dataclass
class FinetuningArguments:
    stage: str = "sft"
    finetuning_type: str = "lora"
    lora_rank: int = 8
    lora_target: str = "all"


def load_model(model_args: ModelArguments) -> Any:
    if model_args.model_name_or_path == "tiny-gpt2":
        torch.manual_seed(0)
        config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=TINY_VOCAB, n_positions=64)
        return GPT2LMHeadModel(config)
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )


def apply_finetuning(model: Any, finetuning_args: FinetuningArguments) -> Any:
    if finetuning_args.finetuning_type == "full":
        return model
    if finetuning_args.finetuning_type != "lora":
        raise SystemExit(f"finetuning_type: expected full or lora (got {finetuning_args!r})")
    import peft

    targets = "all-linear" if finetuning_args.lora_target == "all" else finetuning_args.lora_target
    lora = peft.LoraConfig(
        r=finetuning_args.lora_rank, target_modules=targets, task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, lora)


def load_dataset(data_args: DataArguments) -> tuple[list[Any], list[Any]]:
    """The named dataset, split into train and eval by ``val_size``."""
    if data_args.dataset != "counting":
        raise SystemExit(f"dataset: this example knows only 'counting' (got {data_args.dataset!r})")
    n = data_args.max_samples or 512
    generator = torch.Generator().manual_seed(0)
    starts = torch.randint(0, TINY_VOCAB, (n, 1), generator=generator)
    ids = (starts + torch.arange(data_args.cutoff_len)) % TINY_VOCAB
    rows = [{"input_ids": row, "labels": row.clone()} for row in ids]
    n_eval = int(n * data_args.val_size)
    return rows[n_eval:], rows[:n_eval]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the training YAML")
    parser.add_argument("--out", help="overrides the YAML's output_dir")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    options = parser.parse_args()

    config = yaml.safe_load(options.config.read_text(encoding="utf-8"))
    # A launcher's own overrides; LLaMA-Factory takes them as key=value arguments.
    config.update(use_cpu=not torch.cuda.is_available())
    if options.out:
        config["output_dir"] = options.out
    if options.max_steps:
        config["max_steps"] = options.max_steps
    # Each dataclass takes its own keys; the callback keys are left for callbridge below.
    model_args, data_args, finetuning_args, training_args = HfArgumentParser(
        (ModelArguments, DataArguments, FinetuningArguments, TrainingArguments)
    ).parse_dict(config, allow_extra_keys=True)

    model = apply_finetuning(load_model(model_args), finetuning_args)
    train_dataset, eval_dataset = load_dataset(data_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset or None,
    )
    # The same YAML's custom_callbacks, with the parsed arguments for callbacks that ask.
    callbridge_hf.attach(
        trainer,
        options.config,
        inject={
            "model_args": model_args,
            "data_args": data_args,
            "finetuning_args": finetuning_args,
        },
    )
    trainer.train()
    print(f"done at step {trainer.state.global_step}; see {Path(training_args.output_dir)}")


if __name__ == "__main__":
    main()
