"""Locust workload for teams that already run locust.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 8 -r 2 -t 5m
    GRANITE_SPEECH_MODEL_NAME=granite-4.0-1b-speech GRANITE_SPEECH_API_KEY=... locust ...

The same corpus as ``python -m loadtest.bench`` (short clips, medium recordings and long
ones with long pauses; wav, mp3 and ogg/opus), with the same mix of plain, streamed and
translated requests, weighted by task.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

from loadtest.corpus import Recording, recordings
from loadtest.requirements import CORPUS_TOOLS, require

# Checked here, at import: locust loads this file to run it, and the corpus is made below.
require("loadtest/locustfile.py", commands=CORPUS_TOOLS)
MODEL = os.environ.get("GRANITE_SPEECH_MODEL_NAME", "tiny-granite-speech")
API_KEY = os.environ.get("GRANITE_SPEECH_API_KEY", "").split(",")[0]
RECORDINGS: list[Recording] = recordings(seed=int(os.environ.get("LOADTEST_SEED", "0")))


class SpeechClient(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    def post(self, endpoint: str, recording: Recording, name: str, **fields: str) -> None:
        with self.client.post(f"/v1/audio/{endpoint}", name=name, catch_response=True,
                              files={"file": (recording.name, recording.data)},
                              data={"model": MODEL, **fields}) as response:
            if response.status_code == 429:
                response.failure("overloaded (429)")
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif fields.get("stream") == "true" and '"transcript.text.done"' not in response.text:
                response.failure("stream ended without transcript.text.done")

    @task(4)
    def transcribe_json(self) -> None:
        self.post("transcriptions", random.choice(RECORDINGS), "transcribe json")

    @task(3)
    def transcribe_streamed(self) -> None:
        self.post("transcriptions", random.choice(RECORDINGS), "transcribe stream", stream="true")

    @task(1)
    def subtitles(self) -> None:
        self.post("transcriptions", random.choice(RECORDINGS), "transcribe srt",
                  response_format="srt")

    @task(1)
    def verbose(self) -> None:
        self.post("transcriptions", random.choice(RECORDINGS), "transcribe verbose_json",
                  response_format="verbose_json", **{"timestamp_granularities[]": "segment"})

    @task(1)
    def translate(self) -> None:
        self.post("translations", random.choice(RECORDINGS), "translate en->x",
                  language="en", to_language=random.choice(["fr", "de", "es"]))
