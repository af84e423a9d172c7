"""Progressive decoding: a long upload's head is decoded at once, the rest in a thread that
readers wait for; the result is the one-shot decode's, errors found late reach the readers,
and a reader that is done stops the decoder."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from granite_speech_server.audio.decode import decode_audio
from granite_speech_server.audio.progressive import HOLD_BACK, DecodeCancelled, DecodingAudio
from granite_speech_server.audio.segment import PlanOptions, SpeechPlanner
from granite_speech_server.errors import AudioTooLong
from tests.audio_samples import flac_declaring

SR = 16000
HANG_S = 60
"""How long a wait for a thread may take before the test calls it hung: a deadline that
only a hang meets, never a bound on how fast the thread is."""


@pytest.fixture(scope="module")
def long_wav(speech, tmp_path_factory) -> Path:
    """The clip repeated with pauses to ~90 s, so most of it is past the head."""
    samples, rate = speech
    pause = np.zeros(rate, np.float32)
    path = tmp_path_factory.mktemp("progressive") / "long.wav"
    sf.write(path, np.tile(np.concatenate([samples, pause]), 25), rate, subtype="PCM_16")
    return path


def test_readers_wait_for_the_prefix_they_ask_for():
    audio = DecodingAudio(capacity=10)  # grows as the writer goes past it
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.append(audio.until(3 * SR).size))
    reader.start()
    audio.extend(np.ones(2 * SR, np.float32))
    time.sleep(0.05)
    assert not got  # 2 s are written, but the last HOLD_BACK samples aren't published
    audio.extend(np.ones(2 * SR, np.float32))
    reader.join(timeout=HANG_S)
    assert got == [4 * SR - HOLD_BACK]
    audio.finish()
    assert audio.until(10 * SR).size == audio.whole().size == audio.total == 4 * SR


def test_a_view_stays_valid_when_the_buffer_grows():
    audio = DecodingAudio(capacity=3 * HOLD_BACK)
    first = np.arange(3 * HOLD_BACK, dtype=np.float32)
    audio.extend(first)
    view = audio.until(HOLD_BACK)
    audio.extend(np.full(10 * HOLD_BACK, -1, np.float32))  # past the capacity: a new buffer
    audio.finish()
    assert np.array_equal(view, first[: view.size])
    assert np.array_equal(audio.whole()[: first.size], first) and audio.total == 13 * HOLD_BACK


def test_a_failed_decode_raises_to_every_reader():
    audio = DecodingAudio(capacity=SR)
    audio.extend(np.zeros(SR, np.float32))
    audio.fail(AudioTooLong("too long"))
    with pytest.raises(AudioTooLong):
        audio.until(0)
    with pytest.raises(AudioTooLong):
        audio.whole()


def test_closing_stops_the_writer_and_releases_a_waiting_reader():
    audio = DecodingAudio(capacity=SR)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            audio.until(10 * SR)
        except DecodeCancelled as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    audio.close()  # the request is gone while its planner waits for audio
    reader.join(timeout=HANG_S)
    assert not reader.is_alive() and len(outcome) == 1
    with pytest.raises(DecodeCancelled):
        audio.extend(np.zeros(SR, np.float32))


def test_closing_finished_audio_stops_planning_but_keeps_its_length():
    audio = DecodingAudio.of(np.ones(SR, np.float32))
    audio.close()
    with pytest.raises(DecodeCancelled):  # a planner still reading stops
        audio.until(SR)
    assert audio.whole().size == SR


@pytest.mark.parametrize("fmt", ["wav", "ogg_opus", "mp3", "m4a"])
def test_progressive_decoding_gives_the_one_shot_samples(encoded, long_wav, fmt):
    data = (long_wav if fmt == "wav" else encoded(fmt, src=long_wav)).read_bytes()
    whole = decode_audio(data)
    progressive = decode_audio(data, head_s=5.0)
    assert progressive.declared_s == pytest.approx(whole.duration_s, abs=0.1)
    assert progressive.audio.available >= 5 * SR
    assert np.array_equal(progressive.samples, whole.samples)
    assert (progressive.source_format, progressive.codec) == (whole.source_format, whole.codec)


def test_a_short_file_is_decoded_whole_before_returning(encoded):
    decoded = decode_audio(encoded("mp3").read_bytes(), head_s=20.0)
    assert decoded.audio.total is not None  # no thread: its errors were found up front


def test_an_error_past_the_head_reaches_the_reader(encoded):
    """The FLAC header understates the length: the limit is only crossed after the head."""
    data = flac_declaring(encoded("flac").read_bytes(), 22050)
    decoded = decode_audio(data, head_s=0.5, max_duration_s=2.0)  # the head passed
    with pytest.raises(AudioTooLong, match="maximum of 2 s"):
        decoded.audio.whole()
    assert isinstance(decoded.audio.error, AudioTooLong)


def test_closing_stops_the_decoding_thread(encoded, long_wav):
    data = encoded("ogg_opus", src=long_wav).read_bytes()
    before = {t for t in threading.enumerate() if t.name == "decode"}
    decoded = decode_audio(data, head_s=1.0)
    decoded.audio.close()
    deadline = time.monotonic() + HANG_S
    while {t for t in threading.enumerate() if t.name == "decode"} - before:
        assert time.monotonic() < deadline, "the decoder kept running after close()"
        time.sleep(0.01)
    assert decoded.audio.total is None  # stopped, not finished


def test_the_plan_of_audio_still_decoding_is_the_plan_of_the_whole(long_wav, vad_network):
    whole = decode_audio(long_wav.read_bytes()).samples
    arriving = DecodingAudio(capacity=SR)

    def write_slowly():
        for start in range(0, whole.size, SR):
            arriving.extend(whole[start : start + SR])
            time.sleep(0.002)
        arriving.finish()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    plan = SpeechPlanner(vad_network)
    planned = [s for batch in plan(arriving, PlanOptions()) for s in batch]
    writer.join()
    expected = [s for batch in plan(whole, PlanOptions()) for s in batch]
    assert len(expected) >= 20 and planned == expected


def test_the_rest_is_decoded_at_the_niceness_asked_for(long_wav: Path, monkeypatch):
    import os

    from granite_speech_server.audio import decode

    seen: list[int] = []
    decode_rest = decode._decode_rest

    def recorded(*args) -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        decode_rest(*args)

    monkeypatch.setattr(decode, "_decode_rest", recorded)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    decoded = decode_audio(long_wav.read_bytes(), head_s=5, rest_niceness=3)
    decoded.audio.whole()
    assert seen == [min(19, before + 3)]
