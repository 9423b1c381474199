"""Lightning suite: the framework's advice on tiny CPU runs is filtered by message, nothing else."""

from __future__ import annotations

import pytest

from support.lightning_models import LIGHTNING_NOISE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest cannot set pytestmark: the filters join each test of this folder instead.
    for item in items:
        if item.path.parent.name == "lightning" and item.path.parent.parent.name == "tests":
            for spec in LIGHTNING_NOISE:
                item.add_marker(pytest.mark.filterwarnings(spec))
