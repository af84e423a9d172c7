"""Every response format, logprobs, keywords and unknown fields, over the live server."""

from __future__ import annotations

import logging

import openai
import pytest
import srt
import webvtt

from tests.e2e.test_transcriptions import MODEL

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def transcribe(http, speech_files, fmt="wav", **data):
    response = await http.post("/v1/audio/transcriptions",
                               files={"file": (f"speech.{fmt}", speech_files[fmt])},
                               data={"model": MODEL, **data})
    assert response.status_code == 200, response.text
    return response


def squash(text: str) -> str:
    return "".join(text.split())


async def test_srt_is_a_valid_subtitle_document_of_the_transcript(http, speech_files):
    text = (await transcribe(http, speech_files)).json()["text"]
    response = await transcribe(http, speech_files, response_format="srt")
    assert response.headers["content-type"].startswith("text/plain")
    cues = list(srt.parse(response.text))
    assert squash("".join(cue.content for cue in cues)) == squash(text)
    assert all(cue.start < cue.end for cue in cues)
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))


async def test_vtt_is_a_valid_webvtt_document(http, speech_files):
    text = (await transcribe(http, speech_files)).json()["text"]
    response = await transcribe(http, speech_files, response_format="vtt")
    assert response.headers["content-type"].startswith("text/vtt")
    cues = webvtt.from_string(response.text)
    assert squash("".join(cue.text for cue in cues)) == squash(text)
    assert float(response.headers["x-usage-audio-seconds"]) > 2


async def test_verbose_json_through_the_sdk(server_url, speech_files):
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    result = await client.audio.transcriptions.create(
        model=MODEL, file=("speech.m4a", speech_files["m4a"]), response_format="verbose_json",
        timestamp_granularities=["segment"], language="en")
    assert (result.task, result.language) == ("transcribe", "english")
    # The speech runs from the file's first tenth of a second to its last.
    assert 0 <= result.segments[0].start < 0.1
    assert result.duration - 0.5 < result.segments[-1].end <= result.duration
    assert " ".join(s.text for s in result.segments if s.text) == result.text
    assert all(s.avg_logprob <= 0 for s in result.segments)
    assert result.usage.seconds == pytest.approx(result.duration, abs=0.01)


async def test_logprobs_on_json(http, speech_files):
    body = (await transcribe(http, speech_files, **{"include[]": "logprobs"})).json()
    assert len(body["logprobs"]) == body["usage"]["output_tokens"]
    assert all(lp["logprob"] <= 0 and isinstance(lp["bytes"], list) for lp in body["logprobs"])
    plain = (await transcribe(http, speech_files)).json()
    assert "logprobs" not in plain


@pytest.mark.parametrize(
    ("data", "param"),
    [({"timestamp_granularities[]": "word", "response_format": "verbose_json", "language": "ja"},
      "timestamp_granularities"),
     ({"timestamp_granularities[]": "segment"}, "timestamp_granularities"),
     ({"include[]": "logprobs", "response_format": "text"}, "include"),
     ({"include[]": "everything"}, "include")],
)
async def test_unavailable_options_are_refused_not_ignored(http, speech_files, data, param):
    response = await http.post("/v1/audio/transcriptions",
                               files={"file": ("speech.wav", speech_files["wav"])},
                               data={"model": MODEL, **data})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_keywords_and_prompt_reach_the_prompt(http, speech_files):
    plain = (await transcribe(http, speech_files)).json()["usage"]
    with_keywords = (await transcribe(
        http, speech_files, prompt="Granite, vLLM", keywords=["Kubernetes", "IBM"])).json()["usage"]
    details = with_keywords["input_token_details"]
    assert details["text_tokens"] > plain["input_token_details"]["text_tokens"]
    assert details["audio_tokens"] == plain["input_token_details"]["audio_tokens"]


async def test_unknown_fields_are_accepted_and_logged(http, speech_files, caplog):
    with caplog.at_level(logging.INFO, logger="granite_speech_server.api.audio_form"):
        await transcribe(http, speech_files, future_option="1", chunking_whatever="x")
    assert "chunking_whatever, future_option" in caplog.text


async def test_word_timestamps_cover_every_word_in_order(server_url, speech_files):
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    result = await client.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", speech_files["wav"]), response_format="verbose_json",
        timestamp_granularities=["word", "segment"])
    assert [w.word for w in result.words] == result.text.split()
    assert all(w.start <= w.end for w in result.words)
    assert all(a.end <= b.start + 1e-3 for a, b in zip(result.words, result.words[1:]))
    assert all(0 <= w.start and w.end <= result.duration + 0.01 for w in result.words)
    assert result.segments, "both granularities asked for"
