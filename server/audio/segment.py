"""The segment plan: where the audio is cut before it goes to the model.

The model sees at most ``max_segment_s`` of audio per prompt (its context holds
the audio tokens plus the output). This plan cuts long audio into equal pieces;
it knows nothing about speech yet, so a cut can fall inside a word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A piece of the audio, in samples [start, end)."""

    start: int
    end: int


def plan_segments(num_samples: int, sample_rate: int, max_segment_s: float) -> list[Span]:
    max_len = int(max_segment_s * sample_rate)
    count = max(1, math.ceil(num_samples / max_len))
    bounds = [round(i * num_samples / count) for i in range(count + 1)]
    return [Span(start, end) for start, end in zip(bounds, bounds[1:])]
