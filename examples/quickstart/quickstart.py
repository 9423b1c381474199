"""The quickstart: one ``[tool.callbacks]`` table, run unchanged under two trainers.

``pyproject.toml`` beside this file declares the company monitor, BEMA (evaluating on
the BEMA weights), early stopping, logging, metrics and a company Slack notifier. This
script starts a stand-in for the company platform and for Slack on 127.0.0.1, then
trains the same tiny GPT-2 (2 layers, built from a config: nothing is downloaded) on
the same token data under the Hugging Face ``Trainer`` and under PyTorch Lightning,
with the same table. It prints a summary per trainer and plots the evaluation loss of
the live and of the BEMA weights for both.

    PYTHONPATH=examples/company python examples/quickstart/quickstart.py [--out DIR]

(``nox -s demo`` installs everything and runs it.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Before transformers is imported: the model is built from a config, never fetched.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # after the offline switch, like every framework import below

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "pyproject.toml"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # quickstart_callbacks, named in pyproject.toml

API_KEY = "quickstart-demo-key"  # a stand-in secret: `callbridge show` prints it as ***
TRAINERS = {"hf": "HF Trainer", "lightning": "Lightning"}
#: A trainer's run: (output dir, steps, steps between evaluations, evaluation batch) to
#: (steps done, neutral callbacks in config order).
Runner = Callable[[Path, int, int, dict[str, Any]], tuple[int, list[Any]]]

# The model and the data: small enough for a 2-core CPU, structured enough to learn.
VOCAB, SEQ_LEN, BATCH, N_EVAL = 64, 32, 4, 64
# High on purpose, with small batches: the live weights stay noisy, and the BEMA weights,
# an average over steps, score visibly better.
LEARNING_RATE = 1e-2


# --- a stand-in for the company platform and for Slack ------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/ingest":
            # A real platform refuses a wrong key; the monitor keeps such records.
            if self.headers.get("Authorization") != f"Bearer {receiver.api_key}":
                self._answer(401)
                return
            receiver.accept_records(body["records"])
        elif self.path.startswith("/slack/"):
            receiver.accept_message(self.path.removeprefix("/slack/"), body["text"])
        else:
            self._answer(404)
            return
        self._answer(200)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the training output is enough


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class Receiver:
    """The monitoring platform (``/ingest``) and a Slack webhook (``/slack/<name>``).

    Records are stored by idempotency key, as a real platform deduplicates them;
    Slack messages are kept per webhook path.
    """

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.records: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.receiver = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def accept_records(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            for record in records:
                self.records[record["idempotency_key"]] = record

    def accept_message(self, name: str, text: str) -> None:
        with self._lock:
            self.messages[name].append(text)

    def records_of(self, run_id: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records.values() if r["run_id"] == run_id]


# --- the model and the data, shared by both trainers ---------------------------------------


def tiny_gpt2() -> Any:
    """A 2-layer GPT-2 built from a config, the same weights for every trainer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ_LEN,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=0,  # GPT-2's own (50256) lies outside this vocabulary
        eos_token_id=0,
        # No dropout: the live and BEMA curves then differ by the weights alone.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def token_data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sequences from a fixed random Markov chain: each token has 3 likely successors.

    The chain (seed 0) is shared by training and evaluation data; ``seed`` draws the
    sequences. A model that learns the chain reaches about 0.9 nats from ln 64 = 4.2.
    """
    chain = torch.Generator().manual_seed(0)
    successors = torch.stack([torch.randperm(VOCAB, generator=chain)[:3] for _ in range(VOCAB)])
    odds = torch.tensor([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(n, SEQ_LEN, dtype=torch.long)
    ids[:, 0] = torch.randint(VOCAB, (n,), generator=g)
    for t in range(1, SEQ_LEN):
        pick = torch.multinomial(odds, n, replacement=True, generator=g)
        ids[:, t] = successors[ids[:, t - 1], pick]
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def loss_on(model: Any, batch: dict[str, torch.Tensor]) -> float:
    """The language-model loss of ``model`` on ``batch``, without touching gradients."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = float(model(**batch).loss)
    model.train(was_training)
    return loss


# --- the two trainers, one config ----------------------------------------------------------


def run_hf(
    out: Path, steps: int, eval_every: int, eval_batch: dict[str, Any]
) -> tuple[int, list[Any]]:
    """Train under the HF ``Trainer``; returns the steps done and the neutral callbacks."""
    import transformers

    import callbridge_hf

    transformers.logging.set_verbosity_error()  # the callbacks' own lines are the demo
    transformers.logging.disable_progress_bar()  # bema's save_pretrained at train end
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=N_EVAL,  # one batch: eval_loss is exactly loss_on()
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=eval_every,
        logging_steps=eval_every,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=tiny_gpt2(),
        args=args,
        train_dataset=token_data(steps * BATCH, seed=1),
        eval_dataset=token_data(N_EVAL, seed=2),
    )
    # The trainer's own printer would repeat what the `log` callback says.
    callbridge_hf.remove_default_display(trainer)
    callbridge_hf.attach(trainer, CONFIG, inject={"measure": lambda m: loss_on(m, eval_batch)})
    trainer.train()
    return trainer.state.global_step, callbridge_hf.unwrap(trainer.callback_handler.callbacks)


def run_lightning(
    out: Path, steps: int, eval_every: int, eval_batch: dict[str, Any]
) -> tuple[int, list[Any]]:
    """Train under Lightning; returns the steps done and the neutral callbacks."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    import callbridge_lightning

    # "GPU available: False", "TPU available", a tip: Lightning's start-up lines (its
    # import sets this level, hence here).
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    class LitLM(pl.LightningModule):
        """The same GPT-2 inside a LightningModule; logs ``loss`` and ``val_loss``."""

        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_gpt2()

        def training_step(self, batch: dict[str, torch.Tensor], index: int) -> torch.Tensor:
            loss: torch.Tensor = self.model(**batch).loss
            self.log("loss", loss)
            return loss

        def validation_step(self, batch: dict[str, torch.Tensor], index: int) -> None:
            self.log("val_loss", self.model(**batch).loss)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            # The HF Trainer's optimizer: AdamW, constant rate, no weight decay.
            return torch.optim.AdamW(self.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

    def measure(module: Any) -> float:
        return loss_on(module.model, eval_batch)

    callbacks = callbridge_lightning.callbacks(CONFIG, inject={"measure": measure})
    torch.manual_seed(0)
    trainer = pl.Trainer(
        callbacks=callbacks,
        max_steps=steps,
        val_check_interval=eval_every,  # in optimizer steps across epochs, with:
        check_val_every_n_epoch=None,
        log_every_n_steps=eval_every,
        gradient_clip_val=1.0,  # the HF Trainer's max_grad_norm
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out),
    )
    g = torch.Generator().manual_seed(0)
    trainer.fit(
        LitLM(),
        DataLoader(token_data(steps * BATCH, seed=1), batch_size=BATCH, shuffle=True, generator=g),
        DataLoader(token_data(N_EVAL, seed=2), batch_size=N_EVAL),
    )
    return trainer.global_step, callbridge_lightning.unwrap(callbacks)


# --- the report ----------------------------------------------------------------------------


def summarize(
    name: str, steps: int, neutral: list[Any], receiver: Receiver, seconds: float
) -> dict[str, Any]:
    """What one trainer's run did, from its callbacks and from what the receiver got."""
    from acme_callbacks import SlackNotifier
    from quickstart_callbacks import LossCurves

    from callbridge.callbacks.monitor import MonitorCallback

    monitor = next(cb for cb in neutral if isinstance(cb, MonitorCallback))
    curves = next(cb for cb in neutral if isinstance(cb, LossCurves))
    slack = next(cb for cb in neutral if isinstance(cb, SlackNotifier))
    delivered = receiver.records_of(monitor.run_id)
    return {
        "trainer": TRAINERS[name],
        "steps": steps,
        "evaluations": len(curves.evaluated),
        "monitor_events": monitor.seq,
        "records_delivered": len(delivered),
        "slack_messages": len(receiver.messages[name]),
        "slack_sent": slack.sent,
        "live_eval_loss": curves.live[-1][1] if curves.live else None,
        "bema_eval_loss": curves.evaluated[-1][1] if curves.evaluated else None,
        "seconds": round(seconds, 1),
        "curves": {"train": curves.train, "live": curves.live, "bema": curves.evaluated},
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The side-by-side summary: one line per trainer."""
    columns = [
        ("trainer", "trainer", "{}"),
        ("steps", "steps", "{}"),
        ("evals", "evaluations", "{}"),
        ("monitor events", "monitor_events", "{}"),
        ("records delivered", "records_delivered", "{}"),
        ("slack messages", "slack_messages", "{}"),
        ("live eval_loss", "live_eval_loss", "{:.4f}"),
        ("BEMA eval_loss", "bema_eval_loss", "{:.4f}"),
        ("seconds", "seconds", "{}"),
    ]
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        cells.append(
            [fmt.format(row[key]) if row[key] is not None else "-" for _, key, fmt in columns]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Live and BEMA evaluation loss (and the training loss) per trainer, side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4.5), sharey=True)
    for ax, row in zip(axes, rows, strict=True):
        curves = row["curves"]
        if curves["train"]:
            ax.plot(
                *zip(*curves["train"], strict=True),
                color="0.7",
                lw=1,
                label="training loss (as logged)",
            )
        ax.plot(
            *zip(*curves["live"], strict=True),
            "o-",
            color="tab:blue",
            ms=3,
            label="eval loss, live weights",
        )
        ax.plot(
            *zip(*curves["bema"], strict=True),
            "s-",
            color="tab:orange",
            ms=3,
            label="eval loss, BEMA weights",
        )
        ax.set_title(f"{row['trainer']} ({row['steps']} steps)")
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")  # the late gap between live and BEMA, beside the early drop
        # Plain numbers at a few losses (a locator, unlike set_yticks, never widens the view).
        ax.yaxis.set_major_locator(FixedLocator([0.8, 0.9, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5]))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("loss (nats per token)")
    fig.suptitle("One pyproject.toml, two trainers: live vs BEMA evaluation loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------


def show_callback_lines() -> None:
    """Print what the callbacks log (callbridge's and ACME's loggers) to stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    for name in ("callbridge", "acme"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def quiet_frameworks() -> None:
    """Keep the frameworks' advice about a tiny CPU run out of the demo's output."""
    for message in (
        r"The '\w+_dataloader' does not have many workers",  # num_workers=0 on purpose
        r"GPU available but not used",  # accelerator="cpu" on purpose
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6 on torch 2.13
    ):
        warnings.filterwarnings("ignore", message=message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder (default: a new temp folder)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per trainer")
    parser.add_argument("--eval-every", type=int, default=15, help="steps between evaluations")
    options = parser.parse_args(argv)
    out: Path = options.out or Path(tempfile.mkdtemp(prefix="callbridge-quickstart-"))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    show_callback_lines()
    quiet_frameworks()
    # One thread: on a model this small, more threads cost more than they give, and on a
    # busy machine far more (a step took 25x longer with 2 threads on a shared 2-core CPU).
    torch.set_num_threads(1)

    eval_data = token_data(N_EVAL, seed=2)
    eval_batch = {k: torch.stack([ex[k] for ex in eval_data]) for k in eval_data[0]}
    runners: dict[str, Runner] = {"hf": run_hf, "lightning": run_lightning}
    rows = []
    started = time.perf_counter()
    with Receiver(API_KEY) as receiver:
        # What pyproject.toml reads through ${...}: the platform, the key, the webhook.
        os.environ["ACME_MONITOR_URL"] = f"{receiver.base}/ingest"
        os.environ["ACME_KEY"] = API_KEY
        os.environ["QUICKSTART_BATCH_SIZE"] = str(BATCH)
        for name, runner in runners.items():
            os.environ["SLACK_WEBHOOK_URL"] = f"{receiver.base}/slack/{name}"
            print(f"\n=== {TRAINERS[name]}: {options.steps} steps, {CONFIG.name} ===", flush=True)
            begin = time.perf_counter()
            steps, neutral = runner(out / name, options.steps, options.eval_every, eval_batch)
            seconds = time.perf_counter() - begin
            rows.append(summarize(name, steps, neutral, receiver, seconds))

    png = out / "quickstart_losses.png"
    plot(rows, png)
    (out / "summary.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(f"\n=== the same {CONFIG.name}, two trainers ===")
    print(table(rows))
    print(f"\nplot:    {png}")
    print(f"summary: {out / 'summary.json'}")
    for name in runners:
        print(f"{TRAINERS[name]} outputs: {out / name} (events.jsonl, bema/, acme-monitor.sqlite)")
    print(f"total: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
