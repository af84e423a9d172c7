"""Real encoded speech for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import audio_samples

SPEECH_TEXT = "three one four one five nine two six"


@pytest.fixture(scope="session")
def speech_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The same espeak-ng utterance encoded in every upload format: name -> bytes."""
    out = tmp_path_factory.mktemp("e2e-speech")
    wav = audio_samples.synthesize_speech(SPEECH_TEXT, out / "speech-src.wav")
    files = {}
    for fmt, spec in audio_samples.FORMATS.items():
        path = audio_samples.encode(wav, fmt, out / f"speech-{fmt}{spec.suffix}")
        files[fmt] = Path(path).read_bytes()
    return files
