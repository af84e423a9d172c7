"""POST /v1/audio/translations: OpenAI's X->English, and English->X as an extension."""

from __future__ import annotations

import openai
import pytest

from granite_speech_server.asr.prompt import TRANSLATION_PAIRS
from tests.e2e.test_transcriptions import MODEL

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_sdk_translation_defaults_to_english(server_url, speech_files):
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    result = await client.audio.translations.create(
        model=MODEL, file=("speech.mp3", speech_files["mp3"]), response_format="verbose_json")
    assert result.task == "translate"
    assert result.language == "english"


@pytest.mark.parametrize("target", ["fr", "de", "es", "pt", "ja", "it", "zh"])
async def test_english_to_every_supported_target(http, speech_files, target):
    response = await http.post("/v1/audio/translations",
                               files={"file": ("speech.wav", speech_files["wav"])},
                               data={"model": MODEL, "to_language": target, "language": "en",
                                     "response_format": "verbose_json"})
    assert response.status_code == 200, response.text
    assert response.json()["task"] == "translate"


@pytest.mark.parametrize(
    ("data", "param"),
    [({"to_language": "ko"}, "to_language"),
     ({"language": "fr", "to_language": "de"}, "language"),
     ({"language": "en", "to_language": "en"}, "language")],
)
async def test_unsupported_pairs_are_400_listing_the_supported_ones(http, speech_files, data,
                                                                      param):
    response = await http.post("/v1/audio/translations",
                               files={"file": ("speech.wav", speech_files["wav"])},
                               data={"model": MODEL, **data})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert all(f"{s}->{t}" in error["message"] for s, t in TRANSLATION_PAIRS)
