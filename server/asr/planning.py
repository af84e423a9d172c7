"""A request's segment plan, from the server's settings and the client's options, run
ahead of the engine in a thread of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from granite_speech_server.asr.transcript import TranscriptionOptions
from granite_speech_server.audio.progressive import DecodeCancelled
from granite_speech_server.audio.segment import PlannedSegment, PlanOptions
from granite_speech_server.audio.vad import VadOptions
from granite_speech_server.config import Settings
from granite_speech_server.priority import start_thread


def plan_options(settings: Settings, options: TranscriptionOptions) -> PlanOptions:
    """The server's segment limits and padding, with the client's speech detection
    (``chunking_strategy=server_vad``) where it sent one."""
    default_vad = VadOptions(threshold=settings.vad_threshold,
                             min_silence_ms=settings.vad_min_silence_ms)
    return PlanOptions(
        max_segment_s=settings.max_segment_seconds,
        min_segment_s=settings.min_segment_seconds,
        padding_ms=settings.segment_padding_ms if options.padding_ms is None
        else options.padding_ms,
        vad=options.vad or default_vad,
    )


async def planned_ahead(windows: Iterator[list[PlannedSegment]], niceness: int = 0,
                        ) -> AsyncIterator[list[PlannedSegment]]:
    """The plan's batches, computed in a thread of the request's own that runs ahead: the
    VAD reads the next window while the event loop hands this one to the engine. The
    thread runs at ``niceness`` (``granite_speech_server.priority``). Once the
    request is gone, closing its audio stops the thread at its next read."""
    loop = asyncio.get_running_loop()
    batches: asyncio.Queue = asyncio.Queue()

    def plan() -> None:
        try:
            for batch in windows:
                loop.call_soon_threadsafe(batches.put_nowait, batch)
            loop.call_soon_threadsafe(batches.put_nowait, None)
        except DecodeCancelled:
            pass  # nobody is waiting any more
        except BaseException as exc:  # noqa: BLE001 - raised to the request below
            loop.call_soon_threadsafe(batches.put_nowait, exc)

    start_thread(plan, name="plan", niceness=niceness)
    while (batch := await batches.get()) is not None:
        if isinstance(batch, BaseException):
            raise batch
        yield batch
