"""loadtest.realtime's own logic: the replayed recordings and the saturation point."""

from __future__ import annotations

import numpy as np

from loadtest.realtime import PCM_RATE, recordings, saturation


def row(sessions: int, p90: float, turns: int = 8) -> dict:
    return {"sessions": sessions, "live_p90_ms": p90, "turns": turns, "turns_expected": 8}


def test_saturation_is_where_p90_doubles_or_a_turn_is_lost():
    assert saturation([row(1, 100), row(2, 150), row(4, 201)]) == 4
    assert saturation([row(1, 100), row(2, 120, turns=7)]) == 2
    assert saturation([row(1, 100), row(2, 199)]) is None


def test_a_recording_s_utterances_end_where_the_stream_says():
    (recording,) = recordings(1, 3, seed=4)
    stream = np.frombuffer(recording.pcm, dtype="<i2").astype(np.float32) / 32767
    assert len(recording.utterances) == 3
    ends = [end for end, _ in recording.utterances]
    assert ends == sorted(ends) and ends[0] > 1.0
    for end, clip in recording.utterances:
        # Speech just before each end, silence (the pause) just after it.
        before = stream[int((end - 0.2) * PCM_RATE):int(end * PCM_RATE)]
        after = stream[int((end + 0.05) * PCM_RATE):int((end + 0.9) * PCM_RATE)]
        assert np.abs(before).max() > 0.01 and np.abs(after).max() == 0
        assert clip.dtype == np.float32
