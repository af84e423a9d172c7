"""render(): every response_format's body, media type and headers, checked against the
OpenAI SDK's own types; and the streaming event models."""

from __future__ import annotations

import json
import math
import zlib

import httpx
import openai
import pytest
import srt
import webvtt
from openai.types.audio import (
    Transcription,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    TranslationVerbose,
)

from granite_speech_server.formats.openai import (
    ErrorDetail,
    StreamError,
    TranscriptionResponse,
    TranscriptTextDelta,
    TranscriptTextDone,
    VerboseTranscriptionResponse,
)
from granite_speech_server.asr.transcript import Segment, TokenLogprob, Transcript, Usage
from granite_speech_server.formats.render import (
    compression_ratio,
    frames,
    language_name,
    logprobs_out,
    render,
    token_usage,
)

USAGE = Usage(audio_tokens=120, text_tokens=20, output_tokens=9, seconds=12.3456)


def lp(token: str, logprob: float) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=logprob)


SEGMENTS = [
    Segment(start=0.0, end=1.23, text="Hello there.", token_ids=[11, 12, 13],
            logprobs=[lp("Hello", -0.1), lp(" there", -0.2), lp(".", -0.3)], temperature=0.0),
    Segment(start=1.23, end=12.3456, text="Café au lait, au lait, au lait.",
            token_ids=[21, 22], logprobs=[lp(" Caf", -1.0), lp("é", -2.0)], temperature=0.0),
]


def transcript(**changes) -> Transcript:
    fields = dict(task="transcribe", text="Hello there. Café au lait, au lait, au lait.",
                  language="en", duration=12.3456, segments=SEGMENTS, usage=USAGE)
    return Transcript(**(fields | changes))


def body(rendered) -> dict:
    return json.loads(rendered.body)


EXPECTED_USAGE = {
    "type": "tokens", "input_tokens": 140, "output_tokens": 9, "total_tokens": 149,
    "input_token_details": {"audio_tokens": 120, "text_tokens": 20}, "seconds": 12.346,
}


def test_json_is_text_and_usage():
    response = render(transcript(), "json")
    assert response.media_type == "application/json"
    assert body(response) == {"text": "Hello there. Café au lait, au lait, au lait.",
                              "languages": [], "usage": EXPECTED_USAGE}
    assert Transcription.model_validate(body(response)).usage.total_tokens == 149


def test_json_languages_are_the_detected_ones_and_only_for_transcriptions():
    detected = transcript(language=None, detected_languages=("fr",))
    data = body(render(detected, "json"))
    assert data["languages"] == [{"code": "fr"}]
    assert [lang.code for lang in Transcription.model_validate(data).languages] == ["fr"]
    # OpenAI's translation has no languages: the text is in the target language.
    translated = transcript(task="translate", detected_languages=("fr",))
    assert "languages" not in body(render(translated, "json"))


def test_verbose_language_is_the_client_s_else_the_detected_one():
    def language(**changes) -> str:
        return body(render(transcript(**changes), "verbose_json"))["language"]
    assert language(language=None, detected_languages=("de",)) == "german"
    assert language(language="en", detected_languages=("de",)) == "english"
    assert language(language=None) == "unknown"  # nothing could be told


def test_json_logprobs_only_when_asked():
    assert "logprobs" not in body(render(transcript(), "json"))
    data = body(render(transcript(), "json", include_logprobs=True))
    assert list(data) == ["text", "languages", "logprobs", "usage"]
    assert data["logprobs"][0] == {"token": "Hello", "logprob": -0.1,
                                   "bytes": [72, 101, 108, 108, 111]}
    assert data["logprobs"][4] == {"token": "é", "logprob": -2.0, "bytes": [0xC3, 0xA9]}
    assert len(data["logprobs"]) == 5
    parsed = Transcription.model_validate(data)
    assert [p.token for p in parsed.logprobs] == ["Hello", " there", ".", " Caf", "é"]
    # Logprobs never leak into the other formats.
    assert "logprobs" not in body(render(transcript(), "verbose_json", include_logprobs=True))


def test_text_is_a_plain_body():
    response = render(transcript(), "text")
    assert response.media_type == "text/plain"
    assert response.body == "Hello there. Café au lait, au lait, au lait."


def test_srt_is_text_plain():
    response = render(transcript(), "srt")
    assert response.media_type == "text/plain"
    subs = list(srt.parse(response.body))
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs] == [
        (0.0, 1.23, "Hello there."), (1.23, 12.346, "Café au lait, au lait, au lait.")]


def test_vtt_is_text_vtt():
    response = render(transcript(), "vtt")
    assert response.media_type == "text/vtt"
    text = response.body
    assert text.startswith("WEBVTT\n\n")
    assert [c.text for c in webvtt.from_string(text).captions] == [
        "Hello there.", "Café au lait, au lait, au lait."]


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_plain_bodies_carry_usage_in_headers(fmt):
    assert render(transcript(), fmt).headers == {
        "X-Usage-Audio-Seconds": "12.346", "X-Usage-Input-Tokens": "140",
        "X-Usage-Audio-Tokens": "120", "X-Usage-Output-Tokens": "9"}


@pytest.mark.parametrize("fmt", ["json", "verbose_json"])
def test_json_bodies_carry_usage_in_the_body_only(fmt):
    assert render(transcript(), fmt).headers == {}


def test_json_is_serialized_compactly_and_keeps_unicode():
    rendered = render(transcript(), "json")
    assert rendered.body.startswith('{"text":"Hello there. Café au lait')


def test_verbose_json_shape_and_values():
    response = render(transcript(), "verbose_json")
    assert response.media_type == "application/json"
    data = body(response)
    assert list(data) == ["task", "language", "duration", "text", "segments", "usage"]
    assert data["task"] == "transcribe"
    assert data["language"] == "english"
    assert data["duration"] == 12.346
    assert data["text"] == "Hello there. Café au lait, au lait, au lait."
    first, second = data["segments"]
    assert list(first) == ["id", "seek", "start", "end", "text", "tokens", "temperature",
                           "avg_logprob", "compression_ratio", "no_speech_prob"]
    assert first["id"] == 0 and second["id"] == 1
    # 1.23 * 100 is 122.99999999999999 in floating point: still frame 123.
    assert first["seek"] == 0 and second["seek"] == 123
    assert (second["start"], second["end"]) == (1.23, 12.346)
    assert first["text"] == "Hello there." and first["tokens"] == [11, 12, 13]
    assert first["temperature"] == 0.0
    assert math.isclose(first["avg_logprob"], -0.2)
    assert math.isclose(second["avg_logprob"], -1.5)
    raw = "Café au lait, au lait, au lait.".encode()
    assert second["compression_ratio"] == len(raw) / len(zlib.compress(raw))
    assert first["no_speech_prob"] == 0.0
    assert data["usage"] == {"type": "duration", "seconds": 12.346, "input_tokens": 140,
                             "output_tokens": 9, "total_tokens": 149,
                             "input_token_details": {"audio_tokens": 120, "text_tokens": 20}}
    assert "words" not in data
    parsed = TranscriptionVerbose.model_validate(data)
    assert parsed.segments[1].seek == 123 and parsed.usage.seconds == 12.346


def test_verbose_json_for_a_translation():
    data = body(render(transcript(task="translate", language="en"), "verbose_json"))
    assert (data["task"], data["language"]) == ("translate", "english")
    assert TranslationVerbose.model_validate(data).language == "english"


def test_verbose_json_segments_go_only_when_words_alone_were_asked():
    # Transcript has no word timings yet, so "word" gives neither words nor segments.
    data = body(render(transcript(), "verbose_json", timestamp_granularities=frozenset({"word"})))
    assert "segments" not in data and "words" not in data
    both = frozenset({"word", "segment"})
    assert len(body(render(transcript(), "verbose_json", timestamp_granularities=both))
               ["segments"]) == 2


def test_verbose_json_without_segments_or_text():
    data = body(render(transcript(text="", segments=[], language=None), "verbose_json"))
    assert (data["text"], data["segments"], data["language"]) == ("", [], "unknown")
    TranscriptionVerbose.model_validate(data)


def test_verbose_json_leaves_out_segments_the_model_heard_nothing_in():
    silent = Segment(start=1.5, end=1.7, text="", token_ids=[2], logprobs=[],
                     temperature=0.0)
    data = body(render(transcript(segments=[SEGMENTS[0], silent, SEGMENTS[1]]), "verbose_json"))
    assert [(s["id"], s["text"]) for s in data["segments"]] == [
        (0, "Hello there."), (1, "Café au lait, au lait, au lait.")]


@pytest.mark.parametrize(("code", "name"), [
    ("en", "english"), ("fr", "french"), ("de", "german"), ("es", "spanish"),
    ("pt", "portuguese"), ("ja", "japanese"), ("it", "italian"), ("zh", "chinese"),
    (None, "unknown"),
])
def test_language_names(code, name):
    assert language_name(code) == name


def test_compression_ratio_and_frames():
    assert compression_ratio("") == 0.0
    assert compression_ratio("la " * 200) > 2.4  # Whisper's repetition threshold
    assert compression_ratio("Hello there.") < 1
    assert [frames(s) for s in (0, 0.009, 0.01, 1.23, 2.675, 3600.5)] == [0, 0, 1, 123, 267, 360050]


def test_logprob_bytes_are_utf8():
    (out,) = logprobs_out([lp("日本", -0.5)])
    assert bytes(out.bytes).decode("utf-8") == "日本"
    assert out.bytes == list("日本".encode())


def test_response_models_omit_unset_optional_fields():
    usage = token_usage(USAGE)
    assert "logprobs" not in TranscriptionResponse(text="x", usage=usage).model_dump()
    assert "logprobs" not in json.loads(TranscriptionResponse(text="x", usage=usage)
                                        .model_dump_json())
    # ...but error details keep their nulls, as OpenAI sends them.
    error = StreamError(error=ErrorDetail(message="boom", type="server_error"))
    assert error.model_dump() == {"type": "error", "error": {
        "message": "boom", "type": "server_error", "param": None, "code": None}}
    # The /docs schema still lists the optional fields.
    assert "logprobs" in TranscriptionResponse.model_json_schema(mode="serialization")["properties"]
    assert "words" in VerboseTranscriptionResponse.model_json_schema(
        mode="serialization")["properties"]


def test_stream_events_match_the_sdk_types():
    delta = TranscriptTextDelta(delta=" hello")
    assert json.loads(delta.model_dump_json()) == {"type": "transcript.text.delta",
                                                   "delta": " hello"}
    assert TranscriptionTextDeltaEvent.model_validate_json(delta.model_dump_json()).delta == " hello"

    with_logprobs = TranscriptTextDelta(delta=" é", logprobs=logprobs_out([lp(" é", -0.7)]))
    event = TranscriptionTextDeltaEvent.model_validate_json(with_logprobs.model_dump_json())
    assert event.logprobs[0].bytes == [32, 0xC3, 0xA9]

    done = TranscriptTextDone(text="hello", usage=token_usage(USAGE))
    assert list(json.loads(done.model_dump_json())) == ["type", "text", "usage"]
    parsed = TranscriptionTextDoneEvent.model_validate_json(done.model_dump_json())
    assert parsed.usage.total_tokens == 149 and parsed.logprobs is None

    done = TranscriptTextDone(text="hello", usage=token_usage(USAGE),
                              logprobs=logprobs_out([lp("hello", -0.1)]))
    assert TranscriptionTextDoneEvent.model_validate_json(done.model_dump_json()).logprobs[0].token == "hello"


def test_the_sdk_reads_a_stream_of_these_events_and_raises_on_the_error_event():
    events = [
        TranscriptTextDelta(delta="Hello"),
        TranscriptTextDelta(delta=" there."),
        StreamError(error=ErrorDetail(message="The engine stopped.", type="server_error",
                                      code="engine_error")),
    ]
    stream_body = "".join(f"data: {e.model_dump_json()}\n\n" for e in events)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=stream_body,
                              headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(api_key="test", base_url="http://test/v1",
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    stream = client.audio.transcriptions.create(
        model="granite", file=("a.wav", b"RIFF"), stream=True)
    received = []
    with pytest.raises(openai.APIError) as raised:
        for event in stream:
            received.append(event)
    assert [e.delta for e in received] == ["Hello", " there."]
    assert all(isinstance(e, TranscriptionTextDeltaEvent) for e in received)
    assert raised.value.message == "The engine stopped."
    assert raised.value.body["code"] == "engine_error"
