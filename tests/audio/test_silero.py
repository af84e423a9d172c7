"""The VAD's network in torch gives the package's ONNX sequence model's probabilities."""

from __future__ import annotations

import numpy as np
import soxr
from silero_vad import load_silero_vad
from silero_vad.sequence_vad import frame_blocks

from granite_speech_server.audio.silero import CONTEXT, FRAME, STATE_SHAPE

SR = 16000


def test_probabilities_match_the_packages_onnx_model_block_after_block(speech, vad_network):
    """Speech, then silence and noise, then speech again, over several blocks: the LSTM
    state carried from block to block must be carried the same way."""
    samples, rate = speech
    clip = soxr.resample(samples, rate, SR).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.01, 2 * SR).astype(np.float32)
    audio = np.concatenate([clip, np.zeros(SR // 2, np.float32), noise, 0.3 * clip])
    blocks = list(frame_blocks(audio, FRAME, CONTEXT, max_frames=100))
    assert len(blocks) >= 3

    session = load_silero_vad(sequence=True).session
    network = vad_network
    h = c = np.zeros(STATE_SHAPE, np.float32)
    state = network.initial_state()
    expected, ours = [], []
    for block in blocks:
        probs, h, c = session.run(["speech_probs", "hn", "cn"], {"input": block, "h": h, "c": c})
        expected.append(probs.reshape(-1))
        values, state = network(block, state)
        ours.append(values)
    expected, ours = np.concatenate(expected), np.concatenate(ours)

    assert expected.max() > 0.8 and expected.min() < 0.1  # speech and not: a real test
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-4
    assert np.abs(state[0].numpy() - h).max() < 1e-4
