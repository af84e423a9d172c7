"""/openapi.json documents each form field, from the form models, as multipart."""

from __future__ import annotations

import pytest

from granite_speech_server.api.audio_form import TranscriptionForm, TranslationForm
from granite_speech_server.app import create_app
from tests.api.conftest import api_settings

TRANSCRIPTION_FIELDS = ["file", "model", "language", "languages", "prompt", "keywords",
                        "response_format", "temperature", "timestamp_granularities", "include",
                        "stream", "chunking_strategy", "hotwords"]
TRANSLATION_FIELDS = ["file", "model", "prompt", "response_format", "temperature", "language",
                      "languages", "to_language", "keywords", "timestamp_granularities",
                      "include", "stream", "chunking_strategy", "hotwords"]


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app(api_settings()).openapi()


@pytest.mark.parametrize(("path", "form", "fields"), [
    ("/v1/audio/transcriptions", TranscriptionForm, TRANSCRIPTION_FIELDS),
    ("/v1/audio/translations", TranslationForm, TRANSLATION_FIELDS),
])
def test_each_field_is_documented_in_openai_order(schema, path, form, fields):
    operation = schema["paths"][path]["post"]
    (media_type, content), = operation["requestBody"]["content"].items()
    assert media_type == "multipart/form-data"
    name = content["schema"]["$ref"].rsplit("/", 1)[-1]
    properties = schema["components"]["schemas"][name]["properties"]
    assert list(properties) == fields
    assert list(form.model_fields) == fields
    assert all(properties[field]["description"] for field in fields)
    assert properties["file"]["contentMediaType"] == "application/octet-stream"
    assert schema["components"]["schemas"][name]["required"] == ["file", "model"]
    assert "422" not in operation["responses"]
