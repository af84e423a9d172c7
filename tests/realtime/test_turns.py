"""The server VAD's turns, driven by scripted speech probabilities."""

from __future__ import annotations

import numpy as np
import torch

from granite_speech_server.audio.silero import FRAME
from granite_speech_server.realtime.turns import (
    ServerVad,
    SpeechStarted,
    SpeechStopped,
    TurnCut,
    TurnDetector,
)

MS = 16  # samples per millisecond at 16 kHz


class ScriptedNetwork:
    """Answers each frame with the next scripted probability."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = list(probabilities)

    def initial_state(self):
        return torch.zeros(1), torch.zeros(1)

    def __call__(self, frames: np.ndarray, state):
        taken, self.probabilities = (self.probabilities[:len(frames)],
                                     self.probabilities[len(frames):])
        return np.array(taken, dtype=np.float32), state


def run(probabilities: list[float], vad: ServerVad = ServerVad(), max_turn_s: float = 30,
        chunk: int = 1600) -> list:
    detector = TurnDetector(ScriptedNetwork(probabilities), vad, int(max_turn_s * 16000))
    audio = np.zeros(len(probabilities) * FRAME + 64, dtype=np.float32)
    events = []
    for start in range(0, audio.size, chunk):  # 100 ms appends, frames straddling them
        events += detector.detect(audio[start:start + chunk])
    return events


def test_a_turn_starts_padded_and_stops_after_the_silence():
    probs = [0.1] * 30 + [0.9] * 40 + [0.1] * 20
    events = run(probs, ServerVad(prefix_padding_ms=300, silence_duration_ms=500))
    assert events == [SpeechStarted(30 * FRAME - 300 * MS), SpeechStopped(70 * FRAME)]


def test_a_dip_shorter_than_the_silence_is_one_turn():
    probs = [0.9] * 20 + [0.1] * 10 + [0.9] * 20 + [0.1] * 20
    events = run(probs, ServerVad(silence_duration_ms=500))  # 10 frames = 320 ms
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert events[1] == SpeechStopped(50 * FRAME)


def test_the_lower_threshold_keeps_a_turn_going():
    probs = [0.9] * 10 + [0.4] * 30 + [0.0] * 20  # 0.4 >= 0.5 - 0.15: still speech
    assert run(probs)[1] == SpeechStopped(40 * FRAME)


def test_a_monologue_is_cut_at_its_quietest_frame():
    probs = [0.9] * 200
    probs[180] = 0.36  # a breath, in the last third of the first ~5 s piece
    events = run(probs, max_turn_s=6.4)
    cut = next(e for e in events if isinstance(e, TurnCut))
    assert cut == TurnCut(180 * FRAME + FRAME // 2)
    assert not any(isinstance(e, SpeechStopped) for e in events)


def test_a_turn_never_starts_before_the_floor():
    detector = TurnDetector(ScriptedNetwork([0.9] * 5), ServerVad(prefix_padding_ms=1000),
                            16000 * 30, floor=100)
    (started,) = detector.detect(np.zeros(5 * FRAME + 64, dtype=np.float32))
    assert started == SpeechStarted(100)
