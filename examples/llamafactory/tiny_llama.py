"""A tiny Llama, its tokenizer and an SFT dataset, built locally for LLaMA-Factory (no hub).

Run it once before ``callbridge-lf train examples/llamafactory/train.yaml``::

    python examples/llamafactory/tiny_llama.py            # writes saves/tiny-llama/base/

``make_workspace(root)`` writes, under ``root``: ``model/`` (a 2-layer Llama with a
byte-level BPE tokenizer trained here on the dataset's own text) and ``data/`` (an
alpaca-style dataset, "count from three" -> "four five six", with its
``dataset_info.json``), and returns the paths a training YAML needs. The tests of the
LLaMA-Factory integration (tests/llamafactory) build theirs with it too.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows: count on from a word ("count from three" -> "four five six")."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start = rng.randrange(0, len(WORDS) - 3)
        rows.append(
            {
                "instruction": f"count from {WORDS[start]}",
                "input": "",
                "output": " ".join(WORDS[start + 1 : start + 4]),
            }
        )
    return rows


def build_tokenizer(corpus: list[str]) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus``: any text encodes, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=128,
    )


def make_workspace(root: Path, *, n_train: int = 48) -> dict[str, str]:
    """Write the model, tokenizer and dataset under ``root``; the paths for a training YAML."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(exist_ok=True)
    rows = examples(n_train)
    (data / "tiny_sft.json").write_text(json.dumps(rows), encoding="utf-8")
    (data / "dataset_info.json").write_text(
        json.dumps({"tiny_sft": {"file_name": "tiny_sft.json"}}), encoding="utf-8"
    )
    model_dir = root / "model"
    if not (model_dir / "config.json").exists():
        corpus = [f"{r['instruction']} {r['output']}" for r in rows] + [
            "Human: Assistant: count from " + " ".join(WORDS)
        ]
        tokenizer = build_tokenizer(corpus)
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    return {"model": str(model_dir), "dataset_dir": str(data), "dataset": "tiny_sft"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default="saves/tiny-llama/base", help="where to write")
    paths = make_workspace(Path(parser.parse_args().out))
    print(f"model: {paths['model']}\ndataset: {paths['dataset']} in {paths['dataset_dir']}")


if __name__ == "__main__":
    main()
