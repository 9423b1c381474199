"""callbridge for PyTorch Lightning (``Trainer`` and ``LightningCLI``)."""

from ._adapter import FromConfig, NeutralCallback, callbacks, remove_default_display, unwrap

__all__ = ["FromConfig", "NeutralCallback", "callbacks", "remove_default_display", "unwrap"]
