"""The server with its engine replaced by the HTTP-layer tests' scripted engine, for
measuring the server's own work (``loadtest.capacity``).

    python -m loadtest.instant_server --model tests/fixtures/tiny-granite-speech --port 8810

Everything but the model runs: upload parsing, decoding, resampling, the VAD, the plan,
prompts, stitching, formatting. The engine answers every segment at once with text as
long as a speaker would say in it, and computes its log-mel features on the way in, in
one thread, as vLLM's front end does in the API process (its multimodal processor runs in
a one-thread executor), so that CPU counts as the server's too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from granite_speech_server.__main__ import main
from granite_speech_server.asr.engine import SegmentRequest, SegmentResult
from granite_speech_server.audio.features import SAMPLE_RATE, log_mel_features
from granite_speech_server.config import Settings
from tests.api.fake_engine import FakeEngine

WORDS = "three one four one five nine two six five three five eight nine seven".split()
WORDS_PER_SECOND = 2.5
"""About conversational speed: the transcript the stitcher and formatters handle."""


class InstantEngine(FakeEngine):
    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self._renderer = ThreadPoolExecutor(1, thread_name_prefix="render")

    def answer(self, request: SegmentRequest, request_id: str) -> str:
        words = max(1, round(request.audio.size / SAMPLE_RATE * WORDS_PER_SECOND))
        return " " + " ".join(WORDS[i % len(WORDS)] for i in range(words))

    async def generate(self, request: SegmentRequest,
                       request_id: str | None = None) -> AsyncIterator[SegmentResult]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._renderer, log_mel_features, request.audio)
        async for result in super().generate(request, request_id):
            yield result


def instant_engine(settings: Settings) -> InstantEngine:
    from transformers import AutoTokenizer

    return InstantEngine(AutoTokenizer.from_pretrained(settings.model))


if __name__ == "__main__":
    main(make_engine=instant_engine)
