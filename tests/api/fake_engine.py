"""A scripted ``SpeechEngine``: the HTTP layer's tests run the whole app on it, without vLLM.

It renders nothing and runs no model: each segment request is answered with the next
scripted text, tokenized by the test checkpoint's real tokenizer (so prompts, token
counts and logprob tokens are what the server would see), token by token when the
request streams. Tests can hold requests in the engine (to fill the server), fail one
mid-way, or let the engine die.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from granite_speech_server.asr.engine import SegmentRequest, SegmentResult
from granite_speech_server.asr.transcript import TokenLogprob
from granite_speech_server.audio.features import audio_token_count

WARM_UP_PREFIX = "warm-up-"
"""Request ids of the server's start-up request (``Transcriber.warm_up``)."""


class FakeEngine:
    def __init__(self, tokenizer: Any, texts: Sequence[str] = (" hello world",)) -> None:
        self.tokenizer = tokenizer
        self.texts = list(texts)
        """Answers in turn, one per segment request; the last one repeats."""
        self.requests: list[SegmentRequest] = []
        """Every segment request of the clients (the warm-up's left out), in order."""
        self.fail_with: BaseException | None = None
        """Raised by the next requests after their first token."""
        self.alive = True
        self.dtype = None
        self.shut_down = False
        self._released = asyncio.Event()
        self._released.set()
        self.arrived = asyncio.Event()
        """Set when a client's request reached the engine."""

    def hold(self) -> None:
        """Keep requests (the warm-up too) in the engine until ``release``."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def audio_tokens(self, num_samples: int) -> int:
        return audio_token_count(num_samples)

    def prompt_tokens(self, request: SegmentRequest) -> int:
        """The prompt as vLLM counts it: the audio placeholder becomes the audio tokens."""
        return len(request.prompt_token_ids) - 1 + self.audio_tokens(request.audio.size)

    def load(self) -> tuple[int, int]:
        return 0, 0

    def shutdown(self) -> None:
        self.shut_down = True

    async def generate(self, request: SegmentRequest,
                       request_id: str | None = None) -> AsyncIterator[SegmentResult]:
        text = self.answer(request, request_id or "")
        await self._released.wait()
        token_ids = self.tokenizer.encode(text, add_special_tokens=False)[:request.max_tokens]
        for n in range(1, len(token_ids) + 1) or [0]:
            if self.fail_with is not None and n > 1:
                raise self.fail_with
            done = n == len(token_ids)
            if request.stream or done:
                yield self._result(request, token_ids[:n], done)
            await asyncio.sleep(0)  # other requests run meanwhile, as in a real engine

    def answer(self, request: SegmentRequest, request_id: str) -> str:
        """The next scripted text; the request is recorded."""
        if request_id.startswith(WARM_UP_PREFIX):
            return self.texts[0]
        self.requests.append(request)
        self.arrived.set()
        return self.texts[min(len(self.requests), len(self.texts)) - 1]

    def _result(self, request: SegmentRequest, token_ids: list[int],
                finished: bool) -> SegmentResult:
        decode = self.tokenizer.decode
        return SegmentResult(
            text=decode(token_ids), token_ids=token_ids,
            logprobs=[TokenLogprob(decode([token]), -0.25) for token in token_ids],
            prompt_tokens=self.prompt_tokens(request), finished=finished)
