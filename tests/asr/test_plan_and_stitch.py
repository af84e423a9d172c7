"""Pure logic: stitching and the output budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from granite_speech_server.asr.stitch import join_texts
from granite_speech_server.asr.transcriber import Transcriber
from granite_speech_server.config import Settings


def test_join_uses_spaces_except_for_unspaced_scripts():
    assert join_texts([" one two", "", "three "], "en") == "one two three"
    assert join_texts(["こんにちは", "世界"], "ja") == "こんにちは世界"
    assert join_texts([], None) == ""


@pytest.fixture
def transcriber():
    return Transcriber(engine=SimpleNamespace(tokenizer=None), settings=Settings(model="m"),
                       planner=None)  # budgets need no plan


def test_budget_grows_with_duration_from_a_floor(transcriber):
    assert transcriber.output_budget(16000, 17) == 24 + 10
    assert transcriber.output_budget(16000 * 30, 17) == 24 + 300


def test_budget_never_exceeds_the_context(transcriber):
    # 150 s of audio = 1500 audio tokens + 17 prompt tokens: only ~530 left of 2048.
    n = 150 * 16000
    budget = transcriber.output_budget(n, 17)
    assert budget == 2048 - (16 + 1500)
