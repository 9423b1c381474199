"""callbridge for PyTorch Lightning (``Trainer`` and ``LightningCLI``)."""

from ._adapter import FromConfig, NeutralCallback, callbacks, remove_default_display, unwrap
from ._foreign import HFCallbackOnLightning

__all__ = [
    "FromConfig",
    "HFCallbackOnLightning",
    "NeutralCallback",
    "callbacks",
    "remove_default_display",
    "unwrap",
]
