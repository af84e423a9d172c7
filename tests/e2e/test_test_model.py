"""The trained test model through the live server: a small version of the held-out
evaluation (tools/eval_tiny_model.py; docs/test-model.md has the full one)."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.test_transcriptions import MODEL
from tools.speech_corpus import TARGET_LANGUAGES, small_heldout_cases, word_error_rate

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The full evaluation's targets (200+ clips) with room for a 10-clip sample's noise.
MAX_WER = {"en": 0.10, "fr": 0.20, "de": 0.20, "es": 0.20}


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return small_heldout_cases(n_speech=10, n_empty=3, seed=11)


async def answer(http, case: dict) -> str:
    data = {"model": MODEL}
    if case["to_language"]:
        data.update(language="en", to_language=case["to_language"])
    response = await http.post(f"/v1/audio/{case['endpoint']}",
                               files={"file": ("clip.wav", case["wav"])}, data=data)
    assert response.status_code == 200, response.text
    return response.json()["text"]


@pytest.mark.parametrize("language", TARGET_LANGUAGES)
async def test_held_out_speech_is_transcribed_and_translated(http, cases, language):
    mine = [c for c in cases if c["kind"] == "speech" and (c["to_language"] or "en") == language]
    texts = await asyncio.gather(*(answer(http, case) for case in mine))
    wer = word_error_rate([c["reference"] for c in mine], texts)
    assert wer <= MAX_WER[language], list(zip([c["reference"] for c in mine], texts))


async def test_silence_and_noise_give_empty_text(http, cases):
    empty = [c for c in cases if c["kind"] != "speech"]
    texts = await asyncio.gather(*(answer(http, case) for case in empty))
    assert texts == [""] * len(empty)
