"""``custom_callbacks_only = true``: HF's progress, printing and reporting go, flow control stays.

The reporting integration is a real one: transformers' ``KubeflowCallback``, the one
integration that needs no extra package here, reporting to an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from transformers import DefaultFlowCallback, PrinterCallback, ProgressCallback
from transformers.integrations import KubeflowCallback

from support.hf_models import neutral_callbacks, with_config

MODES = pytest.mark.parametrize("mode", ["callbacks", "attach"])

SCHEDULE = {
    "max_steps": 4,
    "logging_steps": 2,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "save_strategy": "steps",
    "save_steps": 2,
}


class StatusServer:
    """Counts the status reports it receives (the Kubeflow Trainer controller's endpoint)."""

    def __init__(self) -> None:
        self.posts: list[bytes] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                posts.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/status"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def kubeflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StatusServer]:
    """Makes transformers' Kubeflow integration available, reporting to a local server."""
    token = tmp_path / "token"
    token.write_text("test-token")
    with StatusServer() as server:
        monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", server.url)
        monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(token))
        yield server


def kinds(trainer: object) -> list[type]:
    return [type(cb) for cb in trainer.callback_handler.callbacks]  # type: ignore[attr-defined]


def test_without_the_option_defaults_stay_and_report(
    tmp_path: Path, kubeflow: StatusServer
) -> None:
    """The control case: the integration is attached and does reach its server."""
    config = {"custom_callbacks": ["support.recorder.Recorder"]}
    trainer = with_config("attach", tmp_path / "out", config, report_to=["kubeflow"], max_steps=2)

    trainer.train()

    assert {DefaultFlowCallback, PrinterCallback, KubeflowCallback} <= set(kinds(trainer))
    assert len(kubeflow.posts) >= 2  # train begin and train end are always reported


@MODES
@pytest.mark.parametrize(
    ("disable_tqdm", "display"), [(True, PrinterCallback), (False, ProgressCallback)]
)
def test_only_custom_callbacks_keeps_the_flow(
    mode: str, disable_tqdm: bool, display: type, tmp_path: Path, kubeflow: StatusServer
) -> None:
    """Printer or progress bar and reporting removed; log, evaluate and save still on schedule."""
    config = {"custom_callbacks_only": True, "custom_callbacks": ["support.recorder.Recorder"]}
    trainer = with_config(
        mode,
        tmp_path / "out",
        config,
        report_to=["kubeflow"],
        disable_tqdm=disable_tqdm,
        **SCHEDULE,
    )
    (recorder,) = neutral_callbacks(trainer)
    present = kinds(trainer)
    assert DefaultFlowCallback in present
    assert display not in present
    assert KubeflowCallback not in present

    trainer.train()

    assert kubeflow.posts == []

    def steps(event: str) -> list[int]:
        return [step for name, step in recorder.events if name == event]

    assert steps("log:loss") == [2, 4]
    assert steps("evaluate_begin") == [2, 4]
    assert steps("evaluate:eval_loss") == [2, 4]
    assert steps("save") == [2, 4]
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]


@MODES
def test_only_custom_callbacks_keeps_a_display_callback_the_config_declares(
    mode: str, tmp_path: Path
) -> None:
    """A config that swaps tqdm for transformers.PrinterCallback keeps its PrinterCallback."""
    config = {"custom_callbacks_only": True, "custom_callbacks": ["transformers.PrinterCallback"]}
    trainer = with_config(mode, tmp_path, config, disable_tqdm=False)

    present = kinds(trainer)

    assert ProgressCallback not in present
    assert present.count(PrinterCallback) == 1
