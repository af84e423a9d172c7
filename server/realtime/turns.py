"""Server VAD for a live stream: where each turn of speech starts and stops, frame by frame.

The same Silero network as the file API, its recurrent state carried through the whole
session, fed whatever whole 32 ms frames the latest appends completed. A turn starts at
its first speech frame (less the prefix padding) and stops after ``silence_duration_ms``
below Silero's lower threshold, as OpenAI's server_vad does. A turn that runs past
``max_turn_samples`` is cut at its quietest frame in the piece's last third, so a
monologue is transcribed piece by piece while it goes on.

Positions are sample indices at 16 kHz since the session began. CPU work: the session
calls ``detect`` from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from granite_speech_server.audio.features import SAMPLE_RATE
from granite_speech_server.audio.silero import CONTEXT, FRAME, SileroNetwork

HYSTERESIS = 0.15
"""Speech continues until the probability falls this far below the threshold (Silero's
own neg_threshold)."""


@dataclass(frozen=True)
class ServerVad:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def samples(self, ms: int) -> int:
        return ms * SAMPLE_RATE // 1000


@dataclass(frozen=True)
class SpeechStarted:
    start: int
    """Where the turn's audio begins (its first speech, less the prefix padding)."""


@dataclass(frozen=True)
class SpeechStopped:
    end: int
    """Where the turn's audio ends: its last speech frame."""


@dataclass(frozen=True)
class TurnCut:
    at: int
    """A long turn's piece ends here and the next begins."""


TurnEvent = SpeechStarted | SpeechStopped | TurnCut


@dataclass
class _Turn:
    piece_start: int
    last_speech_end: int
    silence: int = 0
    probabilities: list[float] = field(default_factory=list)
    """Of the current piece's frames, for a cut at its quietest."""


class TurnDetector:
    def __init__(self, network: SileroNetwork, vad: ServerVad, max_turn_samples: int,
                 floor: int = 0) -> None:
        self.network = network
        self.vad = vad
        self.max_turn_samples = max_turn_samples
        self.floor = floor
        """No turn starts before this (the end of the last turn, or a clear)."""
        self._state = network.initial_state()
        self._pending = np.zeros(CONTEXT, dtype=np.float32)
        self._position = 0
        """Sample index of the first frame in ``_pending`` after its context."""
        self._turn: _Turn | None = None

    @property
    def speaking(self) -> bool:
        return self._turn is not None

    def detect(self, samples: np.ndarray) -> list[TurnEvent]:
        """The turn events the new ``samples`` (the stream's next ones) complete."""
        self._pending = np.concatenate([self._pending, samples.astype(np.float32)])
        count = (self._pending.size - CONTEXT) // FRAME
        if count == 0:
            return []
        frames = np.lib.stride_tricks.sliding_window_view(
            self._pending[: CONTEXT + count * FRAME], CONTEXT + FRAME)[::FRAME]
        with torch.inference_mode():
            probabilities, self._state = self.network(np.ascontiguousarray(frames), self._state)
        self._pending = self._pending[count * FRAME:]
        events: list[TurnEvent] = []
        for probability in probabilities.tolist():
            events += self._frame(probability, self._position)
            self._position += FRAME
        return events

    def end_turn(self, floor: int) -> None:
        """The client committed or cleared: any turn in progress is over, and none
        starts before ``floor``."""
        self._turn = None
        self.floor = max(self.floor, floor)

    def _frame(self, probability: float, start: int) -> list[TurnEvent]:
        end = start + FRAME
        turn = self._turn
        if turn is None:
            if probability < self.vad.threshold:
                return []
            begin = max(self.floor, start - self.vad.samples(self.vad.prefix_padding_ms))
            self._turn = _Turn(piece_start=begin, last_speech_end=end,
                               probabilities=[probability])
            return [SpeechStarted(begin)]
        turn.probabilities.append(probability)
        if probability >= self.vad.threshold - HYSTERESIS:
            turn.silence, turn.last_speech_end = 0, end
        else:
            turn.silence += FRAME
            if turn.silence >= self.vad.samples(self.vad.silence_duration_ms):
                self._turn = None
                self.floor = turn.last_speech_end
                return [SpeechStopped(turn.last_speech_end)]
        if end - turn.piece_start >= self.max_turn_samples:
            return [self._cut(turn, end)]
        return []

    def _cut(self, turn: _Turn, end: int) -> TurnCut:
        """At the quietest frame of the piece's last third (a pause, if there was one)."""
        probs = turn.probabilities
        tail = len(probs) * 2 // 3
        quietest = tail + int(np.argmin(probs[tail:]))
        at = end - (len(probs) - quietest) * FRAME + FRAME // 2
        turn.piece_start = at
        turn.probabilities = probs[quietest + 1:]
        return TurnCut(at)
