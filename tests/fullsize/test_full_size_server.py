"""The server on a checkpoint of the real model's size, started as a user starts it.

The 3 M-parameter test model can't show what only size shows: a start-up profile that
kept 29 GiB of autograd state and never became ready, or a 500 s dummy clip that took
six minutes to encode. Here ``python -m granite_speech_server`` runs on a random-weight checkpoint of
granite-4.0-1b-speech's exact shape (``tools/full_size_model.py``) with the default
settings (no ``--enforce-eager``) except a small output budget: random weights never say
end-of-text, so every segment runs to its budget, and a token of a 2.3 B model takes a
noticeable fraction of a second on two cores.

Measured on the 2-core EPYC (bfloat16 engine): see ``loadtest/RESULTS.md``, "Full size".
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest.servers import peak_rss_gib, server_processes
from granite_speech_server.audio.decode import decode_audio
from granite_speech_server.audio.features import SAMPLE_RATE
from tests import audio_samples
from tests.ops.conftest import scrape, server_process, value, wav_bytes

READY_WITHIN_S = 900
"""Only ends a start-up that hangs (the autograd profile never became ready): how long
start-up takes is measured by ``python -m loadtest.startup`` (ready in 238-359 s here)."""
MAX_MODEL_LEN = 2048
GiB = 1024**3
ENCODER_PARAMETERS = 0.44e9
PARAMETERS = 2.33e9
SPEECH = ("the quick brown fox jumps over the lazy dog while seven wizards quietly "
          "judge boxing matches under a bright yellow moon")


def _weights_gib(parameters: float, dtype: str) -> float:
    return parameters * (4 if dtype == "float32" else 2) / GiB


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    wav = audio_samples.synthesize_speech(SPEECH, tmp_path_factory.mktemp("fs") / "s.wav")
    return decode_audio(Path(wav).read_bytes()).samples


def _clip(speech: np.ndarray, seconds: float) -> bytes:
    """The sentence said again and again (a pause between), cut to ``seconds``."""
    pause = np.zeros(int(0.8 * SAMPLE_RATE), np.float32)
    once = np.concatenate([speech, pause])
    repeats = int(seconds * SAMPLE_RATE) // len(once) + 1
    return wav_bytes(np.tile(once, repeats)[: int(seconds * SAMPLE_RATE)])


@pytest.fixture(scope="module")
def server(full_size_model: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("full-size-server")
    started = time.monotonic()
    with server_process(full_size_model, logs, "--output-tokens-floor", "2",
                        "--output-tokens-per-second", "0.05",
                        ready_timeout_s=READY_WITHIN_S) as running:
        running.ready_s = time.monotonic() - started
        yield running


def _engine_line(logs: str) -> re.Match:
    found = re.search(r"Engine started in [\d.]+ s: torch\.(\w+), KV cache [^\"]*", logs)
    assert found, "the server logs the engine's dtype and KV cache once started"
    return found


def _transcribe(server, wav: bytes, **fields: str | list[str]) -> dict:
    response = httpx.post(f"{server.url}/v1/audio/transcriptions",
                          files={"file": ("clip.wav", wav, "audio/wav")},
                          data={"model": "tiny-granite-speech", **fields}, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def answers(server, speech: np.ndarray) -> list[dict]:
    """json and verbose_json (word and segment times) of a 10 s and a 60 s upload."""
    answers = []
    for seconds in (10, 60):
        wav = _clip(speech, seconds)
        answers.append(_transcribe(server, wav, response_format="json"))
        answers.append(_transcribe(server, wav, response_format="verbose_json",
                                   **{"timestamp_granularities[]": ["word", "segment"]}))
    return answers


def test_uploads_of_10_and_60_seconds_answer_with_words_and_usage(answers: list[dict]):
    short_json, short_verbose, long_json, long_verbose = answers
    for verbose, seconds in ((short_verbose, 10), (long_verbose, 60)):
        assert verbose["duration"] == pytest.approx(seconds, abs=0.01)
        assert verbose["segments"] and "words" in verbose
        assert verbose["segments"][-1]["end"] <= seconds
    assert len(long_verbose["segments"]) >= 2  # longer than the longest segment (30 s)
    for answer in answers:
        usage = answer["usage"]
        assert usage["input_tokens"] == sum(usage["input_token_details"].values())
        assert usage["output_tokens"] > 0


def test_usage_is_what_the_engine_read_and_no_prompt_exceeds_the_context(server, answers):
    """Usage counts audio tokens by the formula; the engine reports its own prompt
    lengths (the plugin's expansion of the audio placeholder) per segment."""
    samples = scrape(httpx.get(f"{server.url}/metrics").text)
    endpoint = {"endpoint": "/v1/audio/transcriptions"}
    count = value(samples, "granite_speech_prompt_tokens_count", **endpoint)
    assert count > 0
    assert count == value(samples, "granite_speech_segments_per_request_sum", **endpoint)
    assert value(samples, "granite_speech_prompt_tokens_sum", **endpoint) == \
        sum(answer["usage"]["input_tokens"] for answer in answers)
    assert value(samples, "granite_speech_prompt_tokens_bucket",
                 le=f"{float(MAX_MODEL_LEN)}", **endpoint) == count


def test_each_process_stayed_within_its_memory(server, answers):
    """Bounds a regression like the autograd one (worker at 20.6 GB, killed) breaks:
    weights in the engine's dtype, the KV cache, and a margin for activations."""
    engine = _engine_line(server.logs())
    dtype = engine.group(1)
    kv_cache_gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 2))
    bounds = {
        "worker": _weights_gib(PARAMETERS, dtype) + kv_cache_gib + 3.5,
        "engine_core": 1.5,
        # The CTC head's encoder in the engine's dtype, beside the server itself.
        "api": _weights_gib(ENCODER_PARAMETERS, dtype) + 2.0,
    }
    processes = server_processes(server.proc.pid)
    assert processes.keys() == bounds.keys(), processes
    peaks = {role: peak_rss_gib(process.pid) for role, process in processes.items()}
    print(f"\nfull size: {engine.group(0)}; ready in {server.ready_s:.0f} s; peak RSS GiB "
          + ", ".join(f"{role} {peak:.2f}" for role, peak in peaks.items()))
    for role, peak in peaks.items():
        assert peak < bounds[role], (role, peak, bounds[role])
