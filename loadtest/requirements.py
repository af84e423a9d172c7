"""What a benchmark needs beyond the server, checked before it starts anything.

``make serve`` installs the server alone: not the ``bench`` extra's packages, nor the
commands that synthesize (espeak-ng, flite) and encode (ffmpeg) the corpus. A benchmark
that finds one missing where it first uses it loses the run that came before: the
comparison of ``python -m loadtest.bench --compare-vllm`` ran to its end and then died
importing matplotlib for the plots. So each entry point calls ``require`` first, which
names everything missing at once and the make target that installs it.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterable

INSTALL_TARGET = "make install-bench"
EXIT_CODE = 2
"""A usage error, as argparse's: the run never began."""

SYNTHESIZERS = ("espeak-ng", "flite")
"""The commands ``tools.speech_corpus`` speaks the corpus with."""
CORPUS_TOOLS = (*SYNTHESIZERS, "ffmpeg")
"""And ffmpeg, which ``loadtest.corpus`` encodes mp3 and ogg/opus with."""


def missing(modules: Iterable[str] = (), commands: Iterable[str] = ()) -> list[str]:
    """The modules that can't be imported and the commands not on PATH, in order."""
    return ([name for name in modules if not _importable(name)]
            + [name for name in commands if shutil.which(name) is None])


def require(entry_point: str, modules: Iterable[str] = (),
            commands: Iterable[str] = ()) -> None:
    """Exit with ``EXIT_CODE`` and a message naming what is missing, if anything is."""
    absent = missing(modules, commands)
    if absent:
        print(f"{entry_point} needs {', '.join(absent)}, missing from this environment.\n"
              f"`{INSTALL_TARGET}` installs them (the server with its bench extra into "
              ".venv, and the system tools); then run it again with .venv/bin/python.",
              file=sys.stderr)
        raise SystemExit(EXIT_CODE)


def _importable(name: str) -> bool:
    # find_spec, not an import: importing locust, for one, patches the standard library
    # (gevent) in the process that asks.
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken entry
        return False
