"""Every response format over HTTP: body, content type and usage (in the body, or in
headers for plain bodies), read by the OpenAI SDK where it has a type for it."""

from __future__ import annotations

import srt
import webvtt
from openai.types.audio import Transcription, TranscriptionVerbose

from tests.api.conftest import MODEL, api_settings, post, sdk, serving
from tests.api.fake_engine import FakeEngine

TEXT = "hello world"
"""What the fake engine says for the one segment of the speech file."""


def prompt_tokens(engine: FakeEngine) -> int:
    return sum(engine.prompt_tokens(request) for request in engine.requests)


async def test_json_is_text_and_token_usage(client, fake_engine, speech_wav):
    response = await post(client, speech_wav)
    assert response.headers["content-type"] == "application/json"
    assert not any(name.startswith("x-usage-") for name in response.headers)
    body = response.json()
    assert list(body) == ["text", "languages", "usage"]
    assert body["text"] == TEXT
    assert body["languages"] == [{"code": "en"}]  # "hello world", told from the text
    usage = Transcription.model_validate(body).usage
    assert usage.type == "tokens"
    assert usage.input_tokens == prompt_tokens(fake_engine)
    audio_tokens = sum(fake_engine.audio_tokens(r.audio.size) for r in fake_engine.requests)
    assert usage.input_token_details.audio_tokens == audio_tokens > 0
    assert usage.output_tokens == len(fake_engine.tokenizer.encode(" " + TEXT,
                                                                   add_special_tokens=False))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 2 < body["usage"]["seconds"] < 4  # the espeak-ng utterance's length


async def test_json_logprobs_when_asked(client, speech_wav):
    body = (await post(client, speech_wav, {"include[]": "logprobs"})).json()
    assert len(body["logprobs"]) == body["usage"]["output_tokens"]
    assert "".join(lp["token"] for lp in body["logprobs"]).strip() == TEXT
    assert all(bytes(lp["bytes"]).decode() == lp["token"] for lp in body["logprobs"])


async def test_the_sdk_reads_json(client, speech_wav):
    result = await sdk(client).audio.transcriptions.create(
        model=MODEL, file=("speech.wav", speech_wav), include=["logprobs"])
    assert result.text == TEXT and result.logprobs and result.usage.total_tokens > 0


async def test_text_is_a_plain_body_with_usage_headers(client, fake_engine, speech_wav):
    response = await post(client, speech_wav, {"response_format": "text"})
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == TEXT
    headers = response.headers
    assert int(headers["x-usage-input-tokens"]) == prompt_tokens(fake_engine)
    assert int(headers["x-usage-audio-tokens"]) > 0
    assert int(headers["x-usage-output-tokens"]) > 0
    assert 2 < float(headers["x-usage-audio-seconds"]) < 4


async def test_srt_is_a_subtitle_document_served_as_text_plain(client, speech_wav):
    response = await post(client, speech_wav, {"response_format": "srt"})
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "x-usage-output-tokens" in response.headers
    cues = list(srt.parse(response.text))
    assert " ".join(cue.content for cue in cues) == TEXT
    assert all(cue.start < cue.end for cue in cues)


async def test_vtt_is_a_webvtt_document(client, speech_wav):
    response = await post(client, speech_wav, {"response_format": "vtt"})
    assert response.headers["content-type"] == "text/vtt; charset=utf-8"
    assert "x-usage-audio-seconds" in response.headers
    assert response.text.startswith("WEBVTT\n\n")
    assert " ".join(c.text for c in webvtt.from_string(response.text)) == TEXT


async def test_verbose_json_through_the_sdk(client, speech_wav):
    result = await sdk(client).audio.transcriptions.create(
        model=MODEL, file=("speech.wav", speech_wav), response_format="verbose_json",
        timestamp_granularities=["segment", "word"], language="en")
    assert isinstance(result, TranscriptionVerbose)
    assert (result.task, result.language, result.text) == ("transcribe", "english", TEXT)
    (segment,) = result.segments
    assert segment.text == TEXT and segment.id == 0 and segment.start < segment.end
    assert [w.word for w in result.words] == TEXT.split()
    assert result.usage.type == "duration"
    assert result.usage.seconds == round(result.duration, 3)


async def test_verbose_json_without_granularities_has_segments_not_words(client, speech_wav):
    body = (await post(client, speech_wav, {"response_format": "verbose_json"})).json()
    assert "words" not in body and len(body["segments"]) == 1


async def test_a_translation_asks_the_model_to_translate(client, fake_engine, speech_wav):
    result = await sdk(client).audio.translations.create(
        model=MODEL, file=("speech.wav", speech_wav), response_format="verbose_json")
    assert (result.task, result.language, result.text) == ("translate", "english", TEXT)
    prompt = fake_engine.tokenizer.decode(fake_engine.requests[0].prompt_token_ids)
    assert "translate the speech to English" in prompt


async def test_out_of_english_is_an_extension_field(client, fake_engine, speech_wav):
    response = await post(client, speech_wav, {"language": "en", "to_language": "fr"},
                          path="/v1/audio/translations")
    assert response.status_code == 200, response.text
    prompt = fake_engine.tokenizer.decode(fake_engine.requests[0].prompt_token_ids)
    assert "translate the speech to French" in prompt


async def test_prompt_and_keywords_reach_the_model_s_prompt(client, fake_engine, speech_wav):
    await post(client, speech_wav, {"prompt": "Granite; vLLM", "keywords": ["Kubernetes", "IBM"]})
    prompt = fake_engine.tokenizer.decode(fake_engine.requests[0].prompt_token_ids)
    assert "Keywords: Granite, vLLM, Kubernetes, IBM" in prompt


async def test_temperature_reaches_the_engine(client, fake_engine, speech_wav):
    await post(client, speech_wav, {"temperature": "0.4"})
    assert [r.temperature for r in fake_engine.requests] == [0.4]


async def test_japanese_segments_join_without_spaces(tokenizer, speech_wav):
    engine = FakeEngine(tokenizer, texts=[" abc"])
    async with serving(api_settings(), engine) as client:
        body = (await post(client, speech_wav, {"language": "ja"})).json()
    assert body["text"] == "abc"


async def test_every_response_carries_its_request_id(client, speech_wav):
    response = await client.post("/v1/audio/transcriptions", headers={"X-Request-ID": "r-1"},
                                 files={"file": ("speech.wav", speech_wav)},
                                 data={"model": MODEL})
    assert response.headers["x-request-id"] == "r-1"
