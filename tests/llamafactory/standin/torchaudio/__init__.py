"""A stand-in for ``torchaudio`` where no build of it can load next to the installed torch.

Why it exists: the only torch here is the CPU wheel ``torch==2.13.0+cpu``, and the
``torchaudio`` wheels the package index serves are CUDA builds that fail to load with it.
LLaMA-Factory 0.9.5 imports ``torchaudio`` at module level
(``llamafactory/data/mm_plugin.py``) and uses it only to read and resample audio
(``torchaudio.load``, ``torchaudio.functional.resample``) for audio datasets. The
``llamafactory`` nox session puts this folder on ``PYTHONPATH`` so that LLaMA-Factory
imports; every function it would use raises, saying why. Nothing here is used to train on
text, and no test trains on audio.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NoReturn

__version__ = "0.0.0+standin"

_WHY = (
    "torchaudio is a stand-in here (tests/llamafactory/standin): no torchaudio build that "
    "loads with torch 2.13.0+cpu is installed, so audio cannot be read. Install a torchaudio "
    "matching your torch to train on audio"
)


def load(*args: Any, **kwargs: Any) -> NoReturn:
    """Reading audio needs the real torchaudio."""
    raise RuntimeError(_WHY)


def _resample(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError(_WHY)


functional = SimpleNamespace(resample=_resample)
