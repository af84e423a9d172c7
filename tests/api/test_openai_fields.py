"""Today's OpenAI audio fields (issue 25) at the HTTP layer, on the scripted engine.

Each list field is read in both spellings, `name[]` (what the SDKs send) and `name`
(curl, older clients), on both endpoints, and each one shows its effect: keywords in the
prompt the engine received, languages as the spoken language or a restriction of what is
detected, include as logprobs, timestamp granularities as segments (or a refusal that
only a read field can cause)."""

from __future__ import annotations

import pytest
from openai.types.audio import Transcription, TranscriptionVerbose

from tests.api.conftest import api_settings, post, sdk, serving
from tests.api.fake_engine import FakeEngine

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
SPELLINGS = ["", "[]"]


def prompt_of(engine: FakeEngine) -> str:
    return engine.tokenizer.decode(engine.requests[-1].prompt_token_ids)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("path", [TRANSCRIPTIONS, TRANSLATIONS])
async def test_keywords_in_either_spelling_reach_the_prompt(client, fake_engine, speech_wav,
                                                            path, spelling):
    response = await post(client, speech_wav, {f"keywords{spelling}": ["Granite", "vLLM"]},
                          path=path)
    assert response.status_code == 200, response.text
    assert prompt_of(fake_engine).count("Keywords: Granite, vLLM") == 1


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_hotwords_are_keywords(client, fake_engine, speech_wav, spelling):
    await post(client, speech_wav, {"prompt": "IBM", f"hotwords{spelling}": "Granite, vLLM"})
    assert "Keywords: IBM, Granite, vLLM" in prompt_of(fake_engine)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("path", [TRANSCRIPTIONS, TRANSLATIONS])
async def test_include_in_either_spelling_adds_logprobs(client, speech_wav, path, spelling):
    body = (await post(client, speech_wav, {f"include{spelling}": "logprobs"}, path=path)).json()
    assert len(body["logprobs"]) == body["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("path", [TRANSCRIPTIONS, TRANSLATIONS])
async def test_timestamp_granularities_in_either_spelling_are_read(client, speech_wav, path,
                                                                   spelling):
    field = f"timestamp_granularities{spelling}"
    verbose = await post(client, speech_wav, {field: "segment",
                                              "response_format": "verbose_json"}, path=path)
    assert verbose.json()["segments"]
    refused = await post(client, speech_wav, {field: "segment"}, path=path)  # json: no times
    assert refused.json()["error"]["param"] == "timestamp_granularities"


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_one_candidate_language_acts_as_language(client, fake_engine, speech_wav,
                                                       spelling):
    form = {f"languages{spelling}": "de", "response_format": "verbose_json"}
    body = (await post(client, speech_wav, form)).json()
    assert body["language"] == "german"  # the client's, though the text reads as English
    # On translations it is the source language: German translates into English only.
    refused = await post(client, speech_wav, {f"languages{spelling}": "de", "to_language": "fr"},
                         path=TRANSLATIONS)
    assert refused.json()["error"]["param"] == "language"


@pytest.mark.parametrize(("candidates", "detected"), [
    (None, [{"code": "en"}]),             # the fake engine says " hello world"
    (["en", "fr"], [{"code": "en"}]),
    (["fr", "de"], []),                   # English among French and German: nothing sure
])
async def test_languages_are_detected_within_the_candidates(client, speech_wav, candidates,
                                                            detected):
    form = {"languages[]": candidates} if candidates else {}
    body = (await post(client, speech_wav, form)).json()
    assert body["languages"] == detected
    verbose = (await post(client, speech_wav, {**form, "response_format": "verbose_json"})).json()
    assert verbose["language"] == ("english" if detected else "unknown")


async def test_text_too_short_to_tell_has_no_language(tokenizer, speech_wav):
    async with serving(api_settings(), FakeEngine(tokenizer, texts=[" ok"])) as client:
        body = (await post(client, speech_wav)).json()
    assert (body["text"], body["languages"]) == ("ok", [])


async def test_the_detected_language_ends_a_stream(tokenizer, speech_wav):
    engine = FakeEngine(tokenizer, texts=[" Bonjour, je voudrais un café s'il vous plaît."])
    async with serving(api_settings(), engine) as client:
        stream = await sdk(client).audio.transcriptions.create(
            model="whisper-1", file=("speech.wav", speech_wav), stream=True)
        events = [event async for event in stream]
    assert events[-1].type == "transcript.text.done"
    assert [language.code for language in events[-1].languages] == ["fr"]


async def test_the_current_python_sdk_s_list_fields(client, fake_engine, speech_wav):
    """openai-python as a user calls it: keywords, languages and include as lists."""
    result = await sdk(client).audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", speech_wav), keywords=["Granite", "vLLM"],
        languages=["en", "fr"], include=["logprobs"])
    assert isinstance(result, Transcription)
    assert "Keywords: Granite, vLLM" in prompt_of(fake_engine)
    assert [language.code for language in result.languages] == ["en"]
    assert result.logprobs
    verbose = await sdk(client).audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", speech_wav), response_format="verbose_json",
        timestamp_granularities=["segment"], languages=["pt"])
    assert isinstance(verbose, TranscriptionVerbose)
    assert verbose.language == "portuguese" and verbose.segments


async def test_the_sdk_s_keywords_are_the_same_prompt_as_the_extension_and_prompt(
        client, fake_engine, speech_wav):
    prompts = []
    for form in ({"keywords[]": ["Granite", "vLLM"]}, {"keywords": "Granite, vLLM"},
                 {"prompt": "Granite, vLLM"}):
        await post(client, speech_wav, form)
        prompts.append(fake_engine.requests[-1].prompt_token_ids)
    assert prompts[0] == prompts[1] == prompts[2]

