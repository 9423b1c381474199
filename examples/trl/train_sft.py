"""TRL's ``SFTTrainer`` with callbacks from ``callbacks.toml``: neutral built-ins and TRL's own.

Run it (CPU, nothing downloaded; under a minute on a 2-core machine, 46 s measured)::

    pip install ./ "./adapters/hf[trl]"   # callbridge and callbridge-hf with TRL
    python examples/trl/train_sft.py --out runs/trl

What it shows: ``callbridge_hf.attach`` works on TRL's trainers as on ``Trainer``. The
config beside this file declares ``metrics``, ``log`` (JSON lines) and ``reporter``, which
are callbridge's neutral callbacks, and ``trl.BEMACallback``, a TRL callback named by its
import path, which joins the trainer unchanged. Everything is built in code so that it runs
offline: a word-level tokenizer over a 24-word vocabulary, a 2-layer GPT-2, and sentences
generated from those words.

Afterwards ``--out`` holds ``log.jsonl`` (one JSON object per event),
``callbridge_report.json`` (status, steps, final metrics) and ``bema/``, the weights TRL's
``BEMACallback`` averaged (``GPT2LMHeadModel.from_pretrained(out / "bema")``).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import datasets
import tokenizers
import torch
from tokenizers import models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

import callbridge_hf

CONFIG = Path(__file__).resolve().with_name("callbacks.toml")
SPECIALS = ["[PAD]", "[UNK]", "[EOS]"]
SUBJECTS = ["the cat", "the dog", "a bird", "a big dog", "the small cat"]
VERBS = ["sat on", "ran over", "flew in"]
PLACES = ["the mat", "a log", "the tree", "a red house", "the blue house"]


def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of the sentences below (no download)."""
    words = sorted({w for phrase in SUBJECTS + VERBS + PLACES for w in phrase.split()})
    vocab = {word: index for index, word in enumerate(SPECIALS + words)}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        eos_token="[EOS]",
        bos_token="[EOS]",
        model_max_length=32,
    )


def sentences(n: int, seed: int = 0) -> datasets.Dataset:
    """``n`` sentences like "the cat sat on a log", in a ``text`` column (what SFT reads)."""
    rng = random.Random(seed)
    text = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}" for _ in range(n)]
    return datasets.Dataset.from_dict({"text": text})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/trl", help="output directory (default: runs/trl)")
    parser.add_argument("--max-steps", type=int, default=30, help="optimizer steps (default: 30)")
    options = parser.parse_args()

    processing_class = tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_head=2,
            n_embd=32,
            n_positions=32,
            vocab_size=len(processing_class),
            pad_token_id=processing_class.pad_token_id,
            bos_token_id=processing_class.eos_token_id,
            eos_token_id=processing_class.eos_token_id,
        )
    )
    args = SFTConfig(
        output_dir=options.out,
        max_steps=options.max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=5,
        max_length=16,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        # TRL turns activation checkpointing on by default; a 2-layer model does not need it.
        activation_checkpointing=False,
    )
    # The model is an object and the tokenizer is given: SFTTrainer looks nothing up online.
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=sentences(128), processing_class=processing_class
    )
    callbridge_hf.attach(trainer, CONFIG)
    trainer.train()
    print(f"done at step {trainer.state.global_step}; see {Path(options.out).resolve()}")


if __name__ == "__main__":
    main()
