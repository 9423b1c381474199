"""Tiny Hugging Face parts built in code: a 2-layer GPT-2, token datasets, a word-level tokenizer.

Nothing here touches the model hub, so the HF and cross-framework suites run
offline. Every builder is seeded: two calls give the same model and data, which
is what lets a resumed run be compared with an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
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

TESTS = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "hf_train.py"
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


def lm_examples(
    n: int = 16, seq_len: int = SEQ_LEN, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Causal-LM examples as a list of dicts of tensors (labels = input_ids)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (n, seq_len), generator=generator)
    return [
        {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()}
        for row in ids
    ]


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
    model: Any = None,
    n_train: int = 16,
    n_eval: int = 4,
    trainer_class: type[Trainer] = Trainer,
    trainer_kwargs: dict[str, Any] | None = None,
    **args: Any,
) -> Trainer:
    """A ``Trainer`` on a tiny GPT-2 (or ``model``) and random token data.

    ``args`` override :func:`training_args`; ``trainer_kwargs`` go to the trainer.
    """
    return trainer_class(
        model=tiny_gpt2() if model is None else model,
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


def with_config(mode: str, output_dir: str | Path, config: Any, **kwargs: Any) -> Trainer:
    """:func:`make_trainer` with a callbridge config, the two ways a user can give it.

    Args:
        mode: ``"callbacks"`` (``Trainer(callbacks=callbridge_hf.callbacks(config))``) or
            ``"attach"`` (``callbridge_hf.attach(trainer, config)``).
        output_dir: the trainer's output directory.
        config: anything ``callbridge.load`` takes.
        **kwargs: passed to :func:`make_trainer`.
    """
    import callbridge_hf

    if mode == "callbacks":
        return make_trainer(output_dir, callbacks=callbridge_hf.callbacks(config), **kwargs)
    if mode == "attach":
        return callbridge_hf.attach(make_trainer(output_dir, **kwargs), config)
    raise ValueError(f"mode must be 'callbacks' or 'attach' (got {mode!r})")


def neutral_callbacks(trainer: Trainer) -> list[Any]:
    """The neutral callbacks on ``trainer``, in order, taken out of their HF wrappers."""
    import callbridge_hf

    return callbridge_hf.unwrap(trainer.callback_handler.callbacks)


def subprocess_env() -> dict[str, str]:
    """A child Python's environment: ``tests/`` importable, ``PYTHONPATH`` absolute, offline."""
    env = dict(os.environ)
    entries = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *entries])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def run_script(
    *args: str,
    cwd: str | os.PathLike[str],
    nproc: int = 1,
    timeout: float = 300,
    script: Path = SCRIPT,
) -> str:
    """Run ``script ARGS`` (``hf_train.py`` by default) in a fresh Python, or in ``nproc``
    ranks under ``torchrun``.

    Output goes to a file in ``cwd``, not a pipe: a rank that outlived its launcher
    would hold a pipe open and block the reader. On a timeout the launcher is asked
    to stop (torchrun forwards SIGTERM to its ranks), then it and every process it
    started is killed by id: torchrun's ranks lead sessions of their own, so killing
    the launcher's process group alone would leave them hanging in a collective.
    A launch whose rendezvous port was taken in the meantime (another job on this
    machine) is retried on a new port.

    Returns:
        The script's output (stdout and stderr together).

    Raises:
        AssertionError: the script failed or ran past ``timeout`` (with its output).
    """
    for attempt in range(3):
        if nproc > 1:
            launcher = [
                sys.executable, "-m", "torch.distributed.run",
                "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
            ]  # fmt: skip
        else:
            launcher = [sys.executable]
        returncode, output = _launch([*launcher, str(script), *args], cwd, timeout)
        port_taken = "EADDRINUSE" in output or "address already in use" in output.lower()
        if returncode == 0 or not (nproc > 1 and port_taken and attempt < 2):
            break
    if returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(args)} exited with {returncode}\n{output}")
    return output


def _launch(command: list[str], cwd: str | os.PathLike[str], timeout: float) -> tuple[int, str]:
    log = Path(cwd) / f"hf_train-{os.getpid()}-{next(_RUNS)}.log"
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise AssertionError(
                f"{' '.join(command[1:])} ran past {timeout} s (a hang?)\n"
                f"{log.read_text(encoding='utf-8')}"
            ) from None
    return proc.returncode, log.read_text(encoding="utf-8")


_RUNS = itertools.count()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM the launcher's group, give it a moment, then KILL it and all it started, by id."""
    started = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    for pid in [proc.pid, *started]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _descendants(pid: int) -> list[int]:
    """The live descendants of ``pid``, read from ``/proc`` (empty where there is none)."""
    children: dict[int, list[int]] = {}
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def finish_distributed(status: int = 0) -> int:
    """End a torchrun worker as a user's script should, once its trainer is out of scope.

    Call it after the function that trained returned (``sys.exit(finish_distributed(main()))``):
    the ranks meet at a barrier (every result is on disk), then the process group is
    destroyed. Nothing else may still hold the group then: the HF adapter holds its
    trainer (whose DDP model holds the group) in no reference cycle, so the trainer went
    when ``main`` returned, and the group's gloo threads end here, while Python runs. A
    group released only at interpreter exit can abort the rank there ("terminate called
    without an active exception"), one run in ten on this machine; so a gloo thread left
    is reported, and the worker fails.

    Returns:
        ``status``, or 1 when a gloo thread outlived the process group.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return status
    dist.barrier()
    dist.destroy_process_group()
    left = gloo_threads()
    if left:
        print(
            f"finish_distributed: {len(left)} gloo thread(s) outlived destroy_process_group "
            f"({', '.join(left)}): something still holds the process group (a trainer kept "
            "alive in a reference cycle?)",
            file=sys.stderr,
        )
        return 1
    return status


def gloo_threads() -> list[str]:
    """The names of this process's gloo threads (``pt_gloo_*``, ``gloo_*``), read from /proc."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(n for n in names if n.startswith(("pt_gloo", "gloo")))


def saved_state(checkpoint: str | os.PathLike[str], rank: int = 0) -> dict[str, Any]:
    """The neutral callbacks' states a checkpoint holds for ``rank``, by state key.

    ``checkpoint-N/callbridge/rank<R>-<tag>.pt`` holds the session's state: each entry's
    under its key (its ``id``, or its name).
    """
    (path,) = (Path(checkpoint) / "callbridge").glob(f"rank{rank}-*.pt")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {key: entry["state"] for key, entry in data["entries"].items()}
