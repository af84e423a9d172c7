"""CTC forced alignment: where in the audio each word of a transcript was spoken.

The encoder's CTC head emits one distribution per 20 ms frame over 348 labels
(0 blank, 1-255 Latin-1 characters, 256-347 katakana). Given a transcript, the
Viterbi path through the CTC trellis assigns every character to frames; a word
spans from its first character's first frame to its last character's last frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_SECONDS = 0.02
BLANK = 0


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float


class NotAlignable(ValueError):
    """The text has characters the CTC head has no label for (e.g. kanji)."""


def char_labels(text: str) -> list[int]:
    labels = []
    for char in text:
        code = ord(char)
        if not 0 < code < 256:
            raise NotAlignable(f"no CTC label for {char!r}")
        labels.append(code)
    return labels


def viterbi_path(log_probs: np.ndarray, targets: list[int]) -> np.ndarray:
    """For each frame, the index into ``targets`` it emits, or -1 for blank.

    The standard CTC topology: blanks between and around targets, a repeated
    label needs a blank between its two occurrences.
    """
    frames = log_probs.shape[0]
    states = np.full(2 * len(targets) + 1, BLANK)
    states[1::2] = targets
    n = states.size
    if frames < len(targets) + sum(a == b for a, b in zip(targets, targets[1:])):
        raise NotAlignable("more characters than frames")
    # A state may be entered from itself, the previous state, or (for a label
    # unlike the one two back) skipping the blank between them.
    can_skip = np.zeros(n, bool)
    can_skip[3::2] = states[3::2] != states[1:-2:2]
    score = np.full(n, -np.inf)
    score[:2] = log_probs[0, states[:2]]
    back = np.zeros((frames, n), np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, frames):
        stay = score
        step = np.concatenate(([-np.inf], score[:-1]))
        skip = np.where(can_skip, np.concatenate(([-np.inf, -np.inf], score[:-2])), -np.inf)
        choices = np.stack([stay, step, skip])
        back[t] = np.argmax(choices, axis=0)
        score = choices.max(axis=0) + log_probs[t, states]
    state = n - 1 if n == 1 or score[n - 1] >= score[n - 2] else n - 2
    path = np.empty(frames, int)
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= back[t, state]
    return np.where(path % 2 == 1, path // 2, -1)


def word_timings(log_probs: np.ndarray, text: str, offset_s: float = 0.0) -> list[WordTiming]:
    """Times of each whitespace-separated word of ``text``, ``offset_s`` added."""
    words = text.split()
    if not words:
        return []
    joined = " ".join(words)
    path = viterbi_path(log_probs, char_labels(joined))
    char_frames: dict[int, list[int]] = {}
    for frame, index in enumerate(path):
        if index >= 0:
            char_frames.setdefault(int(index), []).append(frame)
    timings, cursor = [], 0
    for word in words:
        first, last = cursor, cursor + len(word) - 1
        start = char_frames[first][0] * FRAME_SECONDS
        end = (char_frames[last][-1] + 1) * FRAME_SECONDS
        timings.append(WordTiming(word, round(offset_s + start, 3), round(offset_s + end, 3)))
        cursor = last + 2  # past the word and its space
    return timings
