"""Size-true tests: a random-weight checkpoint of the real model's exact shape (4.3 GiB,
``tools/full_size_model.py``), written once under ``~/.cache/granite-speech-server`` and
reused by every clone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def full_size_model() -> Path:
    """Written by a process of its own: the ~5 GB it takes to write is returned at once,
    not kept by the test process while the full-size server runs beside it."""
    from tools.full_size_model import DEFAULT_DIR

    subprocess.run([sys.executable, str(ROOT / "tools" / "full_size_model.py")], check=True)
    return DEFAULT_DIR
