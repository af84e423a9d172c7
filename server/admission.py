"""Admission control: a bounded amount of work in flight, refused at once beyond it.

A request takes a slot on arrival, before its body is read (so a flood costs
headers, not uploads); it adds its audio seconds once decoding told how long
the audio is. Beyond either bound the answer is an immediate 429 with
Retry-After: a queue in front of an engine that is already saturated only
turns overload into timeouts. Everything runs on the event loop, so plain
counters need no lock.
"""

from __future__ import annotations

from granite_speech_server.errors import TooManyRequests, TooMuchAudioInFlight

RETRY_AFTER_S = "1"


class Admission:
    """Counts admitted requests and their audio seconds; 0 disables a bound."""

    def __init__(self, max_requests: int = 0, max_audio_seconds: float = 0) -> None:
        self.max_requests = max_requests
        self.max_audio_seconds = max_audio_seconds
        self.requests = 0
        self.audio_seconds = 0.0

    def admit(self) -> Ticket:
        if self.max_requests and self.requests >= self.max_requests:
            raise TooManyRequests(
                f"The server is at its limit of {self.max_requests} concurrent requests; "
                "retry shortly.", headers={"Retry-After": RETRY_AFTER_S})
        self.requests += 1
        return Ticket(self)

    def _release(self, audio_seconds: float) -> None:
        self.requests -= 1
        # Float sums drift: when nothing is in flight, nothing is.
        self.audio_seconds = max(0.0, self.audio_seconds - audio_seconds) if self.requests else 0.0


class Ticket:
    """One admitted request's share; ``release`` is idempotent."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.audio_seconds = 0.0
        self.released = False

    def add_audio(self, seconds: float) -> None:
        admission = self._admission
        limit = admission.max_audio_seconds
        if limit and admission.audio_seconds + seconds > limit:
            raise TooMuchAudioInFlight(
                f"The server is at its limit of {limit:g} s of audio in flight "
                f"({admission.audio_seconds:.0f} s now; this upload has {seconds:.1f} s); "
                "retry shortly.", headers={"Retry-After": RETRY_AFTER_S})
        admission.audio_seconds += seconds
        self.audio_seconds += seconds

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._release(self.audio_seconds)
