"""callbridge for the Hugging Face ``Trainer`` and TRL's trainers."""

from ._adapter import NeutralCallback, attach, callbacks, remove_default_display, unwrap

__all__ = ["NeutralCallback", "attach", "callbacks", "remove_default_display", "unwrap"]
