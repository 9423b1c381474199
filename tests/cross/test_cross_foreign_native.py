"""A native callback of the other framework: a ConfigError naming both, and where it is.

Here rather than in tests/hf or tests/lightning: the config builds the real callback of
the other framework, so both must be installed (the `all` session).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import callbridge
import callbridge_lightning
from support.hf_models import with_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
MODES = pytest.mark.parametrize("mode", ["callbacks", "attach"])


@MODES
def test_lightning_callback_is_a_config_error_naming_both_frameworks(
    mode: str, tmp_path: Path
) -> None:
    source = FIXTURES / "lightning_native.toml"

    with pytest.raises(callbridge.ConfigError) as excinfo:
        with_config(mode, tmp_path, source)

    error = excinfo.value
    assert error.key_path == "tool.callbacks.custom_callbacks[1]"
    assert Path(error.source).name == "lightning_native.toml"
    assert str(error) == (
        f"{error.source}: tool.callbacks.custom_callbacks[1]: "
        "'lightning.pytorch.callbacks.ModelCheckpoint' is a PyTorch Lightning callback, but this "
        "config is being attached to Hugging Face Trainer (transformers / TRL). Use it with "
        "callbridge_lightning, or declare a neutral callbridge callback that runs under both"
    )


def test_hf_native_callback_runs_under_lightning_through_the_emulation(tmp_path: Path) -> None:
    """transformers.EarlyStoppingCallback under Lightning: adopted in its place, not refused.

    (It was a ConfigError before issue 16; tests/cross/test_cross_foreign_hf.py shows it run.)
    """
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[tool.callbacks]\n"
        "custom_callbacks = [\n"
        '  "support.recorder.Recorder",\n'
        '  { name = "transformers.EarlyStoppingCallback",'
        " args = { early_stopping_patience = 2 } },\n"
        "]\n",
        encoding="utf-8",
    )

    (segment,) = callbridge_lightning.callbacks(pyproject)

    inner = callbridge_lightning.unwrap([segment])
    assert isinstance(inner[1], callbridge_lightning.HFCallbackOnLightning)
    assert inner[1].callback.early_stopping_patience == 2
