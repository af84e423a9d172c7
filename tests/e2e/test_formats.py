"""Every response format, logprobs, keywords, languages and unknown fields, over the live
server."""

from __future__ import annotations

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


async def test_the_current_sdk_s_keywords_are_the_prompt_s_keywords(server_url, http,
                                                                   speech_files):
    """openai-python sends ``keywords[]``: the engine reads the same prompt as for the
    ``keywords`` extension and ``prompt`` (vLLM's own count of its text tokens), not the
    plain one."""
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    file = ("speech.wav", speech_files["wav"])
    plain = await client.audio.transcriptions.create(model=MODEL, file=file)
    sdk = await client.audio.transcriptions.create(model=MODEL, file=file,
                                                   keywords=["Granite", "vLLM"])
    spoken = sdk.usage.input_token_details
    assert spoken.text_tokens > plain.usage.input_token_details.text_tokens
    for form in ({"keywords": "Granite, vLLM"}, {"prompt": "Granite; vLLM"}):
        usage = (await transcribe(http, speech_files, **form)).json()["usage"]
        assert usage["input_token_details"]["text_tokens"] == spoken.text_tokens


async def test_languages_says_what_the_transcript_is_written_in(server_url, speech_files):
    """The test model writes English digit words: detected as English, and the name in
    verbose_json when the client named no language."""
    client = openai.AsyncOpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    file = ("speech.wav", speech_files["wav"])
    result = await client.audio.transcriptions.create(model=MODEL, file=file)
    assert [language.code for language in result.languages] == ["en"]
    verbose = await client.audio.transcriptions.create(model=MODEL, file=file,
                                                       response_format="verbose_json")
    assert verbose.language == "english"
    restricted = await client.audio.transcriptions.create(model=MODEL, file=file,
                                                          languages=["fr", "es"])
    assert restricted.languages == [] and restricted.text == result.text


async def test_unknown_fields_are_refused_by_name(http, speech_files):
    response = await http.post("/v1/audio/transcriptions",
                               files={"file": ("speech.wav", speech_files["wav"])},
                               data={"model": MODEL, "future_option": "1"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "future_option"


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
