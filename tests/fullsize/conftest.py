"""Size-true tests: a random-weight checkpoint of the real model's exact shape (4.3 GiB,
``tools/full_size_model.py``), written once into the ignored ``.cache/`` and reused."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def full_size_model() -> Path:
    from tools.full_size_model import ensure_checkpoint

    return ensure_checkpoint()
