"""Tiny Hugging Face parts built in code: a 2-layer GPT-2, token datasets, a word-level tokenizer.

Nothing here touches the model hub, so the HF and cross-framework suites run
offline. Every builder is seeded: two calls give the same model and data, which
is what lets a resumed run be compared with an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

VOCAB_SIZE = 64
SEQ_LEN = 8

#: The words of the in-code tokenizer; ids follow this order (specials first).
WORDS: tuple[str, ...] = (
    "[PAD]", "[UNK]", "[EOS]",
    "the", "a", "cat", "dog", "bird", "sat", "ran", "flew", "on", "in", "over",
    "mat", "log", "tree", "house", "red", "blue", "green", "big", "small", "and",
)  # fmt: skip


def tiny_gpt2_config(**overrides: Any) -> GPT2Config:
    """A GPT-2 of 2 layers and 32 dimensions (a few thousand parameters)."""
    values: dict[str, Any] = {
        "n_layer": 2,
        "n_embd": 32,
        "n_head": 2,
        "vocab_size": VOCAB_SIZE,
        "n_positions": 32,
        "bos_token_id": WORDS.index("[EOS]"),
        "eos_token_id": WORDS.index("[EOS]"),
        "pad_token_id": WORDS.index("[PAD]"),
    }
    values.update(overrides)
    return GPT2Config(**values)


def tiny_gpt2(seed: int = 0, **overrides: Any) -> GPT2LMHeadModel:
    """A freshly initialised tiny GPT-2 language model, the same for the same seed."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config(**overrides))


def lm_examples(n: int = 16, seq_len: int = SEQ_LEN, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Causal-LM examples as a list of dicts of tensors (labels = input_ids)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (n, seq_len), generator=generator)
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]


def training_args(output_dir: str | Path, **overrides: Any) -> TrainingArguments:
    """CPU-only, quiet ``TrainingArguments``: no reporting, no tqdm, no saving unless asked."""
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_strategy": "steps",
        "logging_steps": 1_000_000,
        "save_strategy": "no",
        "eval_strategy": "no",
        "seed": 0,
        "data_seed": 0,
        "dataloader_num_workers": 0,
    }
    values.update(overrides)
    return TrainingArguments(**values)


def make_trainer(
    output_dir: str | Path,
    *,
    callbacks: list[Any] | None = None,
    n_train: int = 16,
    n_eval: int = 4,
    trainer_class: type[Trainer] = Trainer,
    trainer_kwargs: dict[str, Any] | None = None,
    **args: Any,
) -> Trainer:
    """A ``Trainer`` on a tiny GPT-2 and random token data; ``args`` override :func:`training_args`."""
    return trainer_class(
        model=tiny_gpt2(),
        args=training_args(output_dir, **args),
        train_dataset=lm_examples(n_train, seed=0),
        eval_dataset=lm_examples(n_eval, seed=1) if n_eval else None,
        callbacks=callbacks,
        **(trainer_kwargs or {}),
    )


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over :data:`WORDS` (whitespace split), with pad and eos set."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    vocab = {word: index for index, word in enumerate(WORDS)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="[EOS]",
        bos_token="[EOS]",
        model_max_length=32,
    )


def sentences(n: int = 16, seed: int = 0) -> list[str]:
    """Short sentences over the tokenizer's words."""
    generator = torch.Generator().manual_seed(seed)
    content = WORDS[3:]
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 9, (1,), generator=generator))
        picks = torch.randint(0, len(content), (length,), generator=generator).tolist()
        out.append(" ".join(content[i] for i in picks))
    return out


def text_dataset(n: int = 16, seed: int = 0) -> Any:
    """A ``datasets.Dataset`` with a ``text`` column, the shape SFTTrainer expects."""
    import datasets

    return datasets.Dataset.from_dict({"text": sentences(n, seed)})
