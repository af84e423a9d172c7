"""Self-speculative decoding with a CTC draft (arXiv 2603.11243).

The encoder's CTC head already spells out what was said. Its greedy reading is a
draft: when every frame is confident, it is the answer; otherwise the LLM scores
the whole draft in one forward pass, keeps the prefix it agrees with, and decodes
only the rest token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from granite_speech_server.asr.align import BLANK


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
