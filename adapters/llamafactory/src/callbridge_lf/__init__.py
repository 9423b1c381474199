"""callbridge for LLaMA-Factory: ``custom_callbacks`` in the training YAML, one command to train."""

from ._config import LFConfig, read
from ._train import run_exp

__all__ = ["LFConfig", "read", "run_exp"]
