"""ACME's training callbacks, written once against ``callbridge.Callback``.

Declared by dotted path in a YAML or ``pyproject.toml`` (see ``../callbacks.yaml``),
they run unchanged under the Hugging Face ``Trainer`` (and TRL) and PyTorch Lightning.
"""

from __future__ import annotations

from .detailed_log import DetailedLogger
from .monitor import upload_monitor_to_new_platform
from .slack import SlackNotifier

__all__ = ["DetailedLogger", "SlackNotifier", "upload_monitor_to_new_platform"]
