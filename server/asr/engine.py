"""What the transcription flow asks of an engine, and what it gets back.

``SpeechEngine`` is the seam between the flow and vLLM: the server runs
``VllmEngine`` (``granite_speech_server.asr.vllm_engine``); tests of the HTTP layer and
the flow run a scripted engine behind the same protocol, without vLLM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from granite_speech_server.asr.transcript import TokenLogprob


@dataclass(frozen=True)
class SegmentRequest:
    """One audio segment with its rendered prompt and sampling limits."""

    prompt_token_ids: list[int]
    audio: np.ndarray
    max_tokens: int
    temperature: float = 0.0
    stream: bool = False
    """Yield every step (for streaming) rather than only the final result."""
    score_last: int = 0
    """Also return the logprobs of the prompt's last ``score_last`` tokens (a draft
    being verified in one forward pass)."""
    priority: int = 0
    """The scheduler serves lower values first (then the earlier arrival). A file's
    n-th segment gets n: every file's first segments go ahead of the later segments
    of files that came before it."""

    @property
    def text_tokens(self) -> int:
        """The prompt's tokens but its audio placeholder, which the engine replaces with
        the audio's own tokens (``SpeechEngine.audio_tokens``)."""
        return len(self.prompt_token_ids) - 1


@dataclass
class SegmentResult:
    """What the engine produced so far for one segment (cumulative)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_tokens: int = 0
    """The prompt's tokens as the engine counted them (its audio tokens and its text)."""
    finished: bool = False
    scored: list[float] = field(default_factory=list)
    """Logprobs of the scored prompt tokens (``SegmentRequest.score_last``)."""
    drafted_tokens: int = 0
    """Output tokens taken from a verified draft rather than decoded one by one."""


class SpeechEngine(Protocol):
    """A running model that turns segment requests into text."""

    tokenizer: Any
    """The checkpoint's tokenizer (Hugging Face's interface): prompts are rendered with it."""

    @property
    def dtype(self) -> Any:
        """The torch dtype the model runs in (the CTC head runs in the same)."""

    @property
    def alive(self) -> bool:
        """False once the engine died: it won't come back in this process."""

    def audio_tokens(self, num_samples: int) -> int:
        """The audio tokens the checkpoint makes of ``num_samples`` of 16 kHz audio (its
        prompt's audio placeholder becomes that many)."""

    def load(self) -> tuple[int, int]:
        """(running, waiting) segment requests in the engine's scheduler."""

    def generate(self, request: SegmentRequest,
                 request_id: str | None = None) -> AsyncIterator[SegmentResult]:
        """Cumulative results (every step when ``request.stream``, else the final one);
        closing the iteration early aborts the request. Raises ``EngineError``."""

    def shutdown(self) -> None:
        """Stop the engine and free what it holds."""


async def final_result(engine: SpeechEngine, request: SegmentRequest,
                       request_id: str) -> SegmentResult:
    """The engine's last (complete) result for ``request``."""
    result = SegmentResult()
    async for result in engine.generate(request, request_id):
        pass
    return result
