"""Every Prometheus metric the server exposes at ``GET /metrics``, defined once.

Each app gets its own ``CollectorRegistry`` (tests build several apps in one
process; the global registry would refuse the second). Gauges that describe
live state (in-flight requests and audio, the engine's queue) are read when
scraped, through callbacks, so they can never drift from the truth.

Timing bases: request latency runs from the first byte of the request to the
last byte of the response; the real-time factor and the time to first delta
run from the moment the upload was fully received, so a slow client's upload
doesn't count as processing time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from granite_speech_server.asr.transcript import Transcript

PREFIX = "granite_speech"
NO_FORMAT = "none"
"""``response_format`` label of requests that have none (probes, models, early rejections)."""

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
FIRST_DELTA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
PROMPT_TOKEN_BUCKETS = (32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 8192)
SEGMENT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)

EngineLoad = Callable[[], "tuple[int, int] | None"]
"""Returns (running, waiting) engine requests, or None while there is no engine."""


class Metrics:
    def __init__(
        self,
        *,
        engine_load: EngineLoad,
        inflight_requests: Callable[[], float],
        inflight_audio_seconds: Callable[[], float],
        realtime_sessions: Callable[[], float] = lambda: 0,
    ) -> None:
        self.registry = registry = CollectorRegistry()
        request_labels = ["endpoint", "method", "status", "response_format"]
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests answered, by endpoint (route path), method, "
            "status and response_format (sse for streams, none when not applicable). "
            "Status 499: the client went away mid-response.",
            request_labels, registry=registry)
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Time from the request's first byte to the "
            "response's last byte.", request_labels, buckets=LATENCY_BUCKETS, registry=registry)
        self.audio_received = Counter(
            f"{PREFIX}_audio_received_seconds", "Duration of the audio in uploads (as the "
            "container declares it, for a long upload still decoding).",
            ["endpoint"], registry=registry)
        self.audio_transcribed = Counter(
            f"{PREFIX}_audio_transcribed_seconds", "Duration of the audio whose transcript "
            "(or translation) was completed.", ["endpoint"], registry=registry)
        self.real_time_factor = Histogram(
            f"{PREFIX}_real_time_factor", "Processing time (upload received to final text) "
            "over audio duration; below 1 is faster than real time.", ["endpoint"],
            buckets=RTF_BUCKETS, registry=registry)
        self.segments = Histogram(
            f"{PREFIX}_segments_per_request", "Audio segments the model transcribed per "
            "completed request.", ["endpoint"], buckets=SEGMENT_BUCKETS, registry=registry)
        self.prompt_tokens = Histogram(
            f"{PREFIX}_prompt_tokens", "Prompt tokens (audio and text) of each segment the "
            "model read, as the engine counted them.", ["endpoint"],
            buckets=PROMPT_TOKEN_BUCKETS, registry=registry)
        self.output_tokens = Counter(
            f"{PREFIX}_output_tokens", "Tokens of the completed transcripts, by source: "
            "decoded one by one by the LLM, or taken from a CTC draft the LLM verified "
            "(--speculative-ctc).", ["endpoint", "source"], registry=registry)
        self.time_to_first_delta = Histogram(
            f"{PREFIX}_time_to_first_delta_seconds", "Streaming: time from the upload being "
            "received to the first text delta.", ["endpoint"], buckets=FIRST_DELTA_BUCKETS,
            registry=registry)
        self.decode_failures = Counter(
            f"{PREFIX}_decode_failures", "Uploads refused by the decoder, by container and "
            "codec (FFmpeg's names; unknown when FFmpeg can't open the file) and reason "
            "(the error code).", ["container", "codec", "reason"], registry=registry)
        self.rejections = Counter(
            f"{PREFIX}_admission_rejections", "Requests refused before any work: limit is "
            "requests or audio_seconds (429), shutting_down or not_ready (503).", ["limit"],
            registry=registry)
        Gauge(f"{PREFIX}_inflight_requests", "Audio requests admitted and not finished.",
              registry=registry).set_function(inflight_requests)
        Gauge(f"{PREFIX}_inflight_audio_seconds", "Duration of the audio of the admitted "
              "requests not finished yet.", registry=registry).set_function(inflight_audio_seconds)
        Gauge(f"{PREFIX}_realtime_sessions", "Realtime WebSocket sessions open.",
              registry=registry).set_function(realtime_sessions)
        self.realtime_turns = Counter(
            f"{PREFIX}_realtime_turns", "Turns of realtime sessions sent to the engine, by "
            "session kind (transcription, translation).", ["session"], registry=registry)
        self.realtime_audio = Counter(
            f"{PREFIX}_realtime_audio_received_seconds", "Audio appended to realtime "
            "sessions, by session kind.", ["session"], registry=registry)
        self.realtime_turn_latency = Histogram(
            f"{PREFIX}_realtime_turn_latency_seconds", "From a turn's end (speech stopped, a "
            "cut or a commit) to its final transcript or translation.", ["session"],
            buckets=FIRST_DELTA_BUCKETS, registry=registry)
        registry.register(_EngineLoadCollector(engine_load))

    def observe_request(self, endpoint: str, method: str, status: int,
                        response_format: str | None, seconds: float) -> None:
        labels = (endpoint, method, str(status), response_format or NO_FORMAT)
        self.requests.labels(*labels).inc()
        self.request_duration.labels(*labels).observe(seconds)

    def observe_transcript(self, endpoint: str, transcript: Transcript,
                           processing_seconds: float) -> None:
        audio_seconds = transcript.duration
        self.audio_transcribed.labels(endpoint).inc(audio_seconds)
        self.segments.labels(endpoint).observe(len(transcript.segments))
        for segment in transcript.segments:
            self.prompt_tokens.labels(endpoint).observe(segment.prompt_tokens)
        usage = transcript.usage
        self.output_tokens.labels(endpoint, "decoded").inc(
            usage.output_tokens - usage.drafted_tokens)
        self.output_tokens.labels(endpoint, "ctc_draft").inc(usage.drafted_tokens)
        if audio_seconds > 0:
            self.real_time_factor.labels(endpoint).observe(processing_seconds / audio_seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineLoadCollector(Collector):
    """``granite_speech_engine_requests{state=running|waiting}``, read at scrape time."""

    def __init__(self, engine_load: EngineLoad) -> None:
        self._engine_load = engine_load

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_engine_requests", "Segment requests in the engine's scheduler (its "
            "latest step): running, or waiting for a slot.", labels=["state"])
        load = self._engine_load()
        if load is not None:
            running, waiting = load
            family.add_metric(["running"], running)
            family.add_metric(["waiting"], waiting)
        yield family
