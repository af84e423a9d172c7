"""CTC forced alignment: where in the audio each word of a transcript was spoken.

The encoder's CTC head emits one distribution per 20 ms frame over 348 labels
(0 blank, 1-255 Latin-1 characters, 256-347 katakana). Given a transcript, the
Viterbi path through the CTC trellis assigns every character to frames; a word
spans from its first character's first frame to its last character's last frame.
"""

from __future__ import annotations

import numpy as np

from granite_speech_server.asr.transcript import Segment, WordTiming

FRAME_SECONDS = 0.02
BLANK = 0


class NotAlignable(ValueError):
    """The audio is too short for the text."""


def char_label(char: str) -> int | None:
    """The CTC label of a character, None where the head has none (e.g. kanji, '€')."""
    code = ord(char)
    return code if 0 < code < 256 else None


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
        state -= int(back[t, state])  # int8 arithmetic would overflow past 127 states
    return np.where(path % 2 == 1, path // 2, -1)


def word_timings(log_probs: np.ndarray, text: str, offset_s: float = 0.0) -> list[WordTiming]:
    """Times of each whitespace-separated word of ``text``, ``offset_s`` added.

    Characters without a CTC label are left out of the alignment; a word made
    only of such characters gets a zero-length time where the previous one ended.
    """
    words = text.split()
    joined = " ".join(words)
    labelled = [(i, label) for i, char in enumerate(joined)
                if (label := char_label(char)) is not None]
    if not labelled:
        return [WordTiming(word, offset_s, offset_s) for word in words]
    path = viterbi_path(log_probs, [label for _, label in labelled])
    frames_of: dict[int, list[int]] = {}
    for frame, index in enumerate(path):
        if index >= 0:
            frames_of.setdefault(labelled[index][0], []).append(frame)
    timings, cursor, previous_end = [], 0, 0.0
    for word in words:
        spans = [frames_of[i] for i in range(cursor, cursor + len(word)) if i in frames_of]
        start = spans[0][0] * FRAME_SECONDS if spans else previous_end
        end = (spans[-1][-1] + 1) * FRAME_SECONDS if spans else previous_end
        timings.append(WordTiming(word, round(offset_s + start, 3), round(offset_s + end, 3)))
        previous_end = end
        cursor += len(word) + 1  # past the word and its space
    return timings


def transcript_words(segments: list[Segment], posteriors: list[np.ndarray],
                     audio_starts_s: list[float]) -> list[WordTiming]:
    """Word times of a transcript: each segment's text aligned to the audio it was
    transcribed from (its posteriors; its padded audio starts at ``audio_starts_s``)."""
    words = []
    for segment, log_probs, audio_start in zip(segments, posteriors, audio_starts_s):
        words += segment_words(log_probs, segment, audio_start)
    return words


def segment_words(log_probs: np.ndarray, segment: Segment, audio_offset_s: float,
                  ) -> list[WordTiming]:
    try:
        return word_timings(log_probs, segment.text, audio_offset_s)
    except NotAlignable:
        # More characters than frames: no alignment exists; spread the words evenly
        # rather than lose them.
        words = segment.text.split()
        step = (segment.end - segment.start) / max(1, len(words))
        return [WordTiming(word, round(segment.start + i * step, 3),
                           round(segment.start + (i + 1) * step, 3))
                for i, word in enumerate(words)]
