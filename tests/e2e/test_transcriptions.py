"""POST /v1/audio/transcriptions through a live server on the real vLLM engine."""

from __future__ import annotations

import io
import math

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from granite_speech_server.asr.engine import SegmentRequest
from granite_speech_server.asr.prompt import render_prompt, transcribe_instruction
from granite_speech_server.asr.transcriber import output_budget
from granite_speech_server.audio.decode import decode_audio

MODEL = "tiny-granite-speech"
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def sdk(server_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)


async def engine_text(engine, settings, audio_bytes: bytes) -> tuple[str, int]:
    """What the engine itself says for this upload, bypassing HTTP and the transcriber."""
    samples = decode_audio(audio_bytes).samples
    prompt_ids = render_prompt(engine.tokenizer, transcribe_instruction())
    budget = output_budget(settings, len(samples), len(prompt_ids),
                           engine.audio_tokens(len(samples)))
    result = None
    async for result in engine.generate(SegmentRequest(prompt_ids, samples, budget)):
        pass
    return result.text.strip(), len(result.token_ids)


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def test_sdk_json_equals_direct_engine_output(sdk, engine, settings, speech_files):
    response = await sdk.audio.transcriptions.create(
        model=MODEL, file=("speech.mp3", speech_files["mp3"]), response_format="json"
    )
    expected_text, expected_tokens = await engine_text(engine, settings, speech_files["mp3"])
    assert response.text == expected_text
    assert response.usage.type == "tokens"
    assert response.usage.output_tokens == expected_tokens


async def test_sdk_text_format_is_the_plain_transcript(sdk, engine, settings, speech_files):
    text = await sdk.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", speech_files["wav"]), response_format="text"
    )
    expected_text, _ = await engine_text(engine, settings, speech_files["wav"])
    assert isinstance(text, str)
    assert text == expected_text


async def test_raw_multipart_text_is_a_plain_body(http, engine, settings, speech_files):
    response = await http.post(
        "/v1/audio/transcriptions",
        files={"file": ("speech.flac", speech_files["flac"], "audio/flac")},
        data={"model": MODEL, "response_format": "text"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == (await engine_text(engine, settings, speech_files["flac"]))[0]


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg_vorbis", "ogg_opus", "m4a", "webm", "mp4"])
async def test_every_upload_format_is_transcribed(http, speech_files, fmt):
    response = await http.post(
        "/v1/audio/transcriptions",
        files={"file": (f"speech.{fmt}", speech_files[fmt])},
        data={"model": "whisper-1"},
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["seconds"] == pytest.approx(decode_audio(speech_files["wav"]).duration_s, abs=0.08)
    assert usage["input_token_details"]["audio_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_output_is_bounded_by_the_duration_budget(http, settings, speech_files):
    """A model that never says end-of-text stops after a few seconds' worth of tokens."""
    response = await http.post(
        "/v1/audio/transcriptions",
        files={"file": ("speech.wav", speech_files["wav"])},
        data={"model": MODEL, "response_format": "verbose_json"},
    )
    assert response.status_code == 200
    body = response.json()
    assert len(body["segments"]) == 1
    seconds = body["duration"]
    budget = settings.output_tokens_floor + math.ceil(seconds * settings.output_tokens_per_second)
    assert body["usage"]["output_tokens"] <= budget < 100


def truncated_m4a(speech_files) -> bytes:
    data = speech_files["m4a"]
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "empty": (lambda files: b"", "empty"),
    "not audio": (lambda files: b"this is not audio at all " * 40, "decode"),
    "m4a cut before its index": (truncated_m4a, "decode"),
    "wav with zero samples": (lambda files: wav_bytes(np.zeros(0, np.float32)), "no samples"),
    "0.05 s clip": (lambda files: wav_bytes(np.zeros(800, np.float32)), "minimum is 0.1 s"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
async def test_bad_upload_gets_400_naming_the_problem_and_server_keeps_serving(
    http, speech_files, case
):
    make, words = BAD_UPLOADS[case]
    response = await http.post(
        "/v1/audio/transcriptions",
        files={"file": ("upload.bin", make(speech_files))},
        data={"model": MODEL},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "file"
    assert words in error["message"].lower()

    good = await http.post(
        "/v1/audio/transcriptions",
        files={"file": ("speech.wav", speech_files["wav"])},
        data={"model": MODEL},
    )
    assert good.status_code == 200


async def test_sdk_raises_openai_errors(sdk, speech_files):
    with pytest.raises(openai.NotFoundError) as not_found:
        await sdk.audio.transcriptions.create(model="no-such-model", file=("a.wav", speech_files["wav"]))
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.audio.transcriptions.create(model=MODEL, file=("a.wav", b"garbage" * 50))
    assert bad.value.body["param"] == "file"


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({}, "model"),
        ({"model": MODEL, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "temperature": "3"}, "temperature"),
        ({"model": MODEL, "response_format": "xml"}, "response_format"),
        ({"model": MODEL, "language": "xx"}, "language"),
    ],
)
async def test_invalid_fields_get_400_never_422(http, speech_files, data, param):
    response = await http.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", speech_files["wav"])}, data=data
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_missing_file_is_a_400(http):
    response = await http.post("/v1/audio/transcriptions", data={"model": MODEL})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


async def test_unknown_route_and_wrong_method_use_the_envelope(http):
    missing = await http.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = await http.get("/v1/audio/transcriptions")
    assert wrong_method.status_code == 405
    assert "message" in wrong_method.json()["error"]


async def test_upload_over_the_limit_is_413(engine, settings, speech_files):
    from tests.conftest import live_server

    small = settings.model_copy(update={"max_upload_mb": 0.001})
    async with live_server(small, engine) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("speech.wav", speech_files["wav"])},
            data={"model": MODEL},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
