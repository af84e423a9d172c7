"""Every refusal of a bad request: its status, OpenAI's envelope and the field it names.
The checks run before any audio reaches the engine."""

from __future__ import annotations

import pytest

from tests.api.conftest import api_settings, post, serving

TRANSLATIONS = "/v1/audio/translations"


@pytest.mark.parametrize(("form", "param", "code"), [
    ({"model": "gpt-4o-transcribe"}, "model", "model_not_found"),
    ({"temperature": "2"}, "temperature", "invalid_value"),
    ({"temperature": "warm"}, "temperature", "invalid_value"),
    ({"response_format": "xml"}, "response_format", "invalid_value"),
    ({"stream": "perhaps"}, "stream", "invalid_value"),
    ({"language": "xx"}, "language", "unsupported_language"),
    ({"stream": "true", "response_format": "srt"}, "stream", "invalid_request"),
    ({"stream": "true", "response_format": "verbose_json"}, "stream", "invalid_request"),
    ({"timestamp_granularities[]": "segment"}, "timestamp_granularities", "invalid_request"),
    ({"timestamp_granularities[]": "sentence", "response_format": "verbose_json"},
     "timestamp_granularities", "invalid_request"),
    # Japanese has no word boundaries to align.
    ({"timestamp_granularities[]": "word", "response_format": "verbose_json", "language": "ja"},
     "timestamp_granularities", "invalid_request"),
    ({"include[]": "everything"}, "include", "invalid_request"),
    ({"include[]": "logprobs", "response_format": "text"}, "include", "invalid_request"),
    ({"chunking_strategy": "manual"}, "chunking_strategy", "invalid_request"),
    ({"chunking_strategy": '{"type": "server_vad", "threshold": 2}'}, "chunking_strategy",
     "invalid_request"),
    ({"chunking_strategy[type]": "server_vad", "chunking_strategy[silence_duration_ms]": "-1"},
     "chunking_strategy", "invalid_request"),
    ({"prompt": ", ".join(f"name{i}" for i in range(51))}, "prompt", "invalid_request"),
    ({"keywords": ["x" * 600, "y" * 600]}, "prompt", "invalid_request"),
    ({"languages[]": ["en", "xx"]}, "languages", "unsupported_language"),
    ({"languages": "en", "language": "fr"}, "language", "invalid_request"),
    ({"response_format": "diarized_json"}, "response_format", "invalid_value"),
    ({"known_speaker_names[]": "agent"}, "known_speaker_names", "invalid_request"),
    ({"future_option": "1"}, "future_option", "unknown_parameter"),
])
async def test_a_bad_transcription_field_is_a_400_naming_it(client, fake_engine, speech_wav,
                                                            form, param, code):
    response = await post(client, speech_wav, form)
    status = 404 if param == "model" else 400
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["type"] == "invalid_request_error" and error["message"]
    assert fake_engine.requests == []


@pytest.mark.parametrize(("form", "param"), [
    ({"to_language": "xx"}, "to_language"),
    ({"language": "fr", "to_language": "de"}, "language"),
    ({"stream": "true", "response_format": "vtt"}, "stream"),
    ({"chunking_strategy": "{"}, "chunking_strategy"),
    ({"model": "nope"}, "model"),
    ({"languages[]": ["fr", "xx"]}, "languages"),
    ({"languages": "fr", "to_language": "de"}, "language"),
    ({"timestamp_granularities[]": "word", "response_format": "verbose_json"},
     "timestamp_granularities"),
    ({"include[]": "logprobs", "response_format": "srt"}, "include"),
    ({"response_format": "diarized_json"}, "response_format"),
    ({"seed": "7"}, "seed"),
])
async def test_a_bad_translation_field_names_it(client, speech_wav, form, param):
    response = await post(client, speech_wav, form, path=TRANSLATIONS)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


async def test_an_unsupported_pair_names_the_supported_ones(client, speech_wav):
    error = (await post(client, speech_wav, {"to_language": "ko"}, path=TRANSLATIONS)).json()
    assert "en->fr" in error["error"]["message"] and "fr->en" in error["error"]["message"]


async def test_a_missing_file_or_model_is_a_400_not_a_422(client, speech_wav):
    no_file = await client.post("/v1/audio/transcriptions", data={"model": "x"})
    assert no_file.status_code == 400
    assert no_file.json()["error"] == {"message": "file: Field required",
                                       "type": "invalid_request_error", "param": "file",
                                       "code": "invalid_value"}
    no_model = await client.post("/v1/audio/transcriptions",
                                 files={"file": ("a.wav", speech_wav)})
    assert (no_model.status_code, no_model.json()["error"]["param"]) == (400, "model")


async def test_a_file_that_is_not_audio_is_a_400_on_file(client, fake_engine):
    response = await post(client, b"this is not audio at all" * 100)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"
    assert response.json()["error"]["code"] == "invalid_audio"
    assert fake_engine.requests == []


async def test_empty_fields_mean_the_defaults(client, speech_wav):
    """As FastAPI reads an empty form part for a lone parameter: absent."""
    response = await post(client, speech_wav, {"language": "", "prompt": "", "temperature": "",
                                               "response_format": ""})
    assert response.status_code == 200, response.text
    assert "text" in response.json()


async def test_messages_say_what_is_wrong_and_what_is_supported(client, speech_wav):
    async def message(form: dict, path: str = "/v1/audio/transcriptions") -> str:
        response = await post(client, speech_wav, form, path=path)
        assert response.status_code == 400, response.text
        return response.json()["error"]["message"]
    assert "en, fr, de, es, pt, ja" in await message({"languages[]": ["xx"]})
    assert "no speaker output" in await message({"response_format": "diarized_json"})
    assert "no speaker output" in await message({"known_speaker_references[]": "data:,"})
    unknown = await message({"future_option": "1"}, TRANSLATIONS)
    assert "'future_option'" in unknown and "to_language" in unknown


async def test_known_fields_in_either_spelling_are_not_unknown(client, speech_wav):
    """Every field of the SDK's current types, spelled as the SDK sends it, and as curl
    users write it: none is refused as unknown."""
    for spelling in ("", "[]"):
        response = await post(client, speech_wav, {
            "language": "en", "prompt": "a", "temperature": "0", "response_format": "json",
            f"include{spelling}": "logprobs", "stream": "false", f"keywords{spelling}": ["b", "c"],
            f"languages{spelling}": ["en", "fr"], f"hotwords{spelling}": "d",
            "chunking_strategy": "auto"})
        assert response.status_code == 200, response.text
        response = await post(client, speech_wav, {
            "to_language": "fr", "language": "en", f"languages{spelling}": "en",
            f"keywords{spelling}": "b", f"include{spelling}": "logprobs",
            f"timestamp_granularities{spelling}": "segment", "response_format": "json"},
            path=TRANSLATIONS)
        assert response.status_code == 400  # segment timestamps need verbose_json: all read
        assert response.json()["error"]["param"] == "timestamp_granularities"


async def test_the_model_may_be_named_by_an_alias(client, speech_wav):
    assert (await post(client, speech_wav, {"model": "whisper-1"})).status_code == 200


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nowhere", 404), ("GET", "/v1/audio/transcriptions", 405),
    ("DELETE", "/v1/models", 405)])
async def test_the_framework_s_own_refusals_are_in_the_envelope(client, method, path, status):
    response = await client.request(method, path)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (None, None)


async def test_word_timestamps_are_refused_by_a_server_without_alignment(fake_engine,
                                                                         speech_wav):
    async with serving(api_settings(word_timestamps=False), fake_engine) as client:
        response = await post(client, speech_wav, {"timestamp_granularities[]": "word",
                                                   "response_format": "verbose_json"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "timestamp_granularities"
    assert "--word-timestamps" in response.json()["error"]["message"]


async def test_an_oversized_upload_is_a_413_on_file(fake_engine, speech_wav):
    async with serving(api_settings(max_upload_mb=0.001), fake_engine) as client:
        response = await post(client, speech_wav)
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "file"
