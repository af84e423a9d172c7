"""Self-speculative decoding with a CTC draft (arXiv 2603.11243).

The encoder's CTC head already spells out what was said. Its greedy reading is a
draft: when every frame is confident, it is the answer; otherwise the LLM scores
the whole draft in one forward pass, keeps the prefix it agrees with, and decodes
only the rest token by token.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from granite_speech_server.asr.align import BLANK
from granite_speech_server.asr.engine import (
    SegmentRequest,
    SegmentResult,
    SpeechEngine,
    final_result,
)
from granite_speech_server.asr.transcript import TokenLogprob


@dataclass(frozen=True)
class Draft:
    text: str
    max_entropy: float
    """The least confident frame's entropy, in nats: low means every frame is sure."""


def ctc_draft(log_probs: np.ndarray) -> Draft:
    """Greedy CTC: best label per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(axis=1)
    keep = (best != BLANK) & np.concatenate(([True], best[1:] != best[:-1]))
    # Katakana labels (256-347) have no documented code points: left out of drafts.
    text = "".join(chr(label) for label in best[keep] if label < 256)
    entropy = -(np.exp(log_probs) * log_probs).sum(axis=1)
    return Draft(" ".join(text.split()), float(entropy.max()) if entropy.size else 0.0)


def accepted_prefix(scored: list[float], min_logprob: float) -> int:
    """How many leading draft tokens the LLM finds likely enough to keep."""
    for i, logprob in enumerate(scored):
        if logprob < min_logprob:
            return i
    return len(scored)


class Speculator:
    """Decodes a segment from its CTC posteriors, asking the LLM only what the draft
    leaves open (``--speculative-ctc``)."""

    def __init__(self, engine: SpeechEngine, *, max_entropy: float,
                 min_probability: float) -> None:
        self.engine = engine
        self.max_entropy = max_entropy
        self.min_logprob = math.log(min_probability)

    async def decode(self, request: SegmentRequest, request_id: str,
                     log_probs: np.ndarray) -> SegmentResult:
        """The CTC draft when it is sure; else the prefix of it the LLM confirms in one
        scoring pass, and only the rest decoded token by token."""
        draft = ctc_draft(log_probs)
        draft_ids = self._answer_ids(draft.text)
        if len(draft_ids) > request.max_tokens:
            return await final_result(self.engine, request, request_id)
        if draft.max_entropy <= self.max_entropy:
            return self._drafted(draft_ids, [], prompt_tokens=0)  # the LLM never saw it
        scoring = await final_result(self.engine, dataclasses.replace(
            request, max_tokens=1, score_last=len(draft_ids),
            prompt_token_ids=request.prompt_token_ids + draft_ids), f"{request_id}-score")
        # The engine counted the draft as prompt: the segment's own prompt is the rest.
        prompt_tokens = max(0, scoring.prompt_tokens - len(draft_ids))
        keep = accepted_prefix(scoring.scored, self.min_logprob)
        kept = self._drafted(draft_ids[:keep], scoring.scored[:keep], prompt_tokens)
        if keep == len(draft_ids):
            return kept
        rest = await final_result(self.engine, dataclasses.replace(
            request, prompt_token_ids=request.prompt_token_ids + draft_ids[:keep],
            max_tokens=request.max_tokens - keep), f"{request_id}-rest")
        token_ids = kept.token_ids + rest.token_ids
        return dataclasses.replace(
            kept, text=self.engine.tokenizer.decode(token_ids, skip_special_tokens=True),
            token_ids=token_ids, logprobs=kept.logprobs + rest.logprobs)

    def _answer_ids(self, text: str) -> list[int]:
        """``text`` as the model would answer it: " " + text + end-of-text (its chat
        turn's format)."""
        tokenizer = self.engine.tokenizer
        ids = tokenizer.encode(" " + text, add_special_tokens=False) if text else []
        return [*ids, tokenizer.eos_token_id]

    def _drafted(self, token_ids: list[int], scored: list[float], prompt_tokens: int,
                 ) -> SegmentResult:
        tokenizer = self.engine.tokenizer
        return SegmentResult(
            text=tokenizer.decode(token_ids, skip_special_tokens=True), token_ids=token_ids,
            logprobs=[TokenLogprob(tokenizer.decode([t]), lp) for t, lp in zip(token_ids, scored)],
            prompt_tokens=prompt_tokens, finished=True, drafted_tokens=len(token_ids))
