"""Models, health and readiness on the live server."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_models_lists_every_served_name(http, settings):
    body = (await http.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == ["tiny-granite-speech", "whisper-1"]
    assert all(card["object"] == "model" and card["root"] == settings.model for card in body["data"])


async def test_model_by_id_and_unknown_model(http):
    assert (await http.get("/v1/models/whisper-1")).json()["id"] == "whisper-1"
    missing = await http.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_health_and_readiness(http):
    assert (await http.get("/health")).json() == {"status": "ok"}
    ready = await http.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


async def test_openapi_documents_every_form_field(http):
    spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for path, extensions in [("/v1/audio/transcriptions", {"keywords", "languages", "hotwords"}),
                             ("/v1/audio/translations", {"keywords", "to_language"})]:
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        fields = schemas[body.rsplit("/", 1)[1]]["properties"]
        assert extensions <= fields.keys()
        undocumented = [name for name, field in fields.items() if not field.get("description")]
        assert undocumented == [], path
        assert "422" not in operation["responses"]
        assert {"200", "400", "404", "413", "503"} <= operation["responses"].keys()
    assert "examples" in schemas["TranslationForm"][
        "properties"]["to_language"]
    assert (await http.get("/docs")).status_code == 200
