"""Self-speculative decoding (--speculative-ctc) over HTTP on the trained test model: the
CTC head's drafts, verified by the LLM, stand in for most decoded tokens, and the
transcripts stay those of plain decoding."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import live_server
from tests.e2e.test_transcriptions import MODEL
from tests.ops.conftest import metrics, value
from tools.speech_corpus import small_heldout_set, wav_bytes, word_error_rate

pytestmark = pytest.mark.asyncio(loop_scope="session")
TOKENS = "granite_speech_output_tokens_total"


async def transcribe_all(client: httpx.AsyncClient, clips) -> list[str]:
    limit = asyncio.Semaphore(8)

    async def one(clip) -> str:
        async with limit:
            response = await client.post("/v1/audio/transcriptions",
                                         files={"file": ("clip.wav", wav_bytes(clip.audio))},
                                         data={"model": MODEL})
            assert response.status_code == 200, response.text
            return response.json()["text"]

    return await asyncio.gather(*(one(clip) for clip in clips))


async def test_drafts_replace_decoding_and_keep_the_transcripts(settings, engine, http):
    clips = small_heldout_set(n_speech=40, n_empty=4, seed=21)
    references = [clip.text for clip in clips]
    plain = await transcribe_all(http, clips)
    speculative_settings = settings.model_copy(update={"speculative_ctc": True})
    async with live_server(speculative_settings, engine) as url, \
            httpx.AsyncClient(base_url=url, timeout=300) as client:
        drafted = await transcribe_all(client, clips)
        samples = await metrics(client)
    endpoint = "/v1/audio/transcriptions"
    from_drafts = value(samples, TOKENS, endpoint=endpoint, source="ctc_draft")
    decoded = value(samples, TOKENS, endpoint=endpoint, source="decoded")
    assert from_drafts > 2 * decoded, (from_drafts, decoded)
    assert sum(a == b for a, b in zip(plain, drafted)) >= 0.9 * len(clips)
    assert word_error_rate(references, drafted) <= word_error_rate(references, plain) + 0.01
    assert [text for clip, text in zip(clips, drafted) if not clip.text] == ["", "", "", ""]
