"""The vLLM engine: built from Settings, fed prompt ids plus 16 kHz audio.

``VllmEngine`` is the only class that speaks vLLM's request API. It is the
``SpeechEngine`` (``granite_speech_server.asr.engine``) the server runs, handing out
``SegmentResult``s, so nothing downstream depends on vLLM's output types.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from granite_speech_server.asr.checkpoint import check_granite_speech
from granite_speech_server.asr.engine import SegmentRequest, SegmentResult
from granite_speech_server.asr.transcript import TokenLogprob
from granite_speech_server.audio.features import (
    DOWNSAMPLE_RATE,
    SAMPLE_RATE,
    WINDOW_SIZE,
    audio_token_count,
    longest_audio_samples,
)
from granite_speech_server.config import Settings
from granite_speech_server.errors import EngineError
from granite_speech_server.vllm_plugin import ARCHITECTURE, ENGINE_ENV, intake, shm_wait

log = logging.getLogger(__name__)


@dataclass
class SchedulerLoad:
    """The engine scheduler's queue after its latest step."""

    running: int = 0
    waiting: int = 0


def _load_recorder(load: SchedulerLoad):
    """A vLLM stat logger that only keeps the scheduler's queue lengths.

    vLLM reports them after every engine step when stats are on; passing a custom
    logger turns them on without vLLM's periodic throughput log lines.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LoadRecorder(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None,
                   engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                load.running = scheduler_stats.num_running_reqs
                load.waiting = (scheduler_stats.num_waiting_reqs
                                + scheduler_stats.num_skipped_waiting_reqs)

        def log_engine_initialized(self) -> None:
            pass

    return LoadRecorder


PROMPT_TEXT_TOKENS = 32
"""Room for a prompt's text around its audio (the transcription prompt is ~18 tokens)."""


def longest_prompt_audio(settings: Settings, checkpoint: dict | None = None) -> int:
    """Samples of the longest audio one of this server's prompts carries: a planned
    segment (at most ``--max-segment-seconds``), or less where the context can't hold
    that much beside the prompt's text and the output floor."""
    context_room = settings.max_model_len - PROMPT_TEXT_TOKENS - settings.output_tokens_floor
    fits_context = longest_audio_samples(context_room, *projector_windowing(checkpoint))
    return max(SAMPLE_RATE, min(int(settings.max_segment_seconds * SAMPLE_RATE), fits_context))


def projector_windowing(checkpoint: dict | None) -> tuple[int, int]:
    """config.json's ``window_size`` and ``downsample_rate``: what vLLM builds the
    projector from, and what the plugin counts audio tokens with."""
    checkpoint = checkpoint or {}
    return (checkpoint.get("window_size", WINDOW_SIZE),
            checkpoint.get("downsample_rate", DOWNSAMPLE_RATE))


def engine_args(settings: Settings, checkpoint: dict | None = None):
    """vLLM's arguments; ``checkpoint`` is the model's config.json, where it is known."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=settings.model,
        served_model_name=settings.model_names,
        max_model_len=settings.max_model_len,
        dtype=engine_dtype(settings.dtype),
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_num_seqs=settings.max_num_seqs,
        tensor_parallel_size=settings.tensor_parallel_size,
        enforce_eager=settings.enforce_eager,
        # One audio per prompt, and vLLM profiles memory with the longest this server
        # sends instead of its 500 s default (longer than any prompt of a 2048 context).
        limit_mm_per_prompt={"audio": {"count": 1,
                                       "length": longest_prompt_audio(settings, checkpoint)}},
        mm_processor_cache_gb=settings.mm_processor_cache_gib,
        # Our plugin's class: vLLM's own Granite processor needs torchaudio.
        hf_overrides={"architectures": [ARCHITECTURE]},
        disable_log_stats=True,
        # SegmentRequest.priority: a short file's segments don't queue behind all of a
        # long file's, and a stream's first words come first.
        scheduling_policy="priority",
    )


def engine_dtype(requested: str) -> str:
    """``--dtype``, with ``auto`` made float32 on an x86 host without a GPU whose CPU has
    no bfloat16 instructions (AVX512-BF16 or AMX).

    vLLM's ``auto`` runs a bfloat16 checkpoint, or a float32 one it downcasts, in
    bfloat16 on any x86 CPU, and PyTorch emulates bfloat16 matmuls where the CPU lacks
    them: on a Xeon with AVX-512 but no BF16, 30 GFLOP/s a core against float32's 149,
    and the server 1.8x as fast over HTTP in float32 (loadtest/RESULTS.md). The cost is
    twice the weights' memory.
    """
    if requested != "auto" or not _cpu_only_x86_without_bf16():
        return requested
    log.info("This CPU has no bfloat16 instructions: the engine runs in float32 "
             "(--dtype to choose).")
    return "float32"


def engine_on_cpu() -> bool:
    """Whether the engine this server starts computes on the host's CPU (no GPU)."""
    import torch

    return not torch.cuda.is_available()


def _cpu_only_x86_without_bf16() -> bool:
    import torch

    if torch.cuda.is_available() or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    has_bf16 = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return not has_bf16


class VllmEngine:
    """A ``SpeechEngine``: an AsyncLLM running a Granite speech checkpoint."""

    def __init__(self, llm, tokenizer, scheduler_load: SchedulerLoad | None = None,
                 checkpoint: dict | None = None) -> None:
        self._llm = llm
        self.tokenizer = tokenizer
        self._scheduler_load = scheduler_load
        self._windowing = projector_windowing(checkpoint)
        self._renderer = RenderedTogether(llm.renderer)

    @classmethod
    def start(cls, settings: Settings) -> VllmEngine:
        """Build the engine (blocking: loads weights and spawns the engine core)."""
        _configure_engine_environment(settings)  # before vLLM is imported
        checkpoint = check_granite_speech(settings.model)
        from vllm.v1.engine.async_llm import AsyncLLM

        load = SchedulerLoad()
        started = time.monotonic()
        args = engine_args(settings, checkpoint)
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[_load_recorder(load)])
        cache = llm.vllm_config.cache_config
        log.info("Engine started in %.0f s: %s, KV cache %d tokens (%d blocks of %d), "
                 "memory profiled with %.0f s of audio", time.monotonic() - started,
                 llm.model_config.dtype, (cache.num_gpu_blocks or 0) * cache.block_size,
                 cache.num_gpu_blocks or 0, cache.block_size,
                 args.limit_mm_per_prompt["audio"]["length"] / SAMPLE_RATE)
        engine = cls(llm, llm.get_tokenizer(), load, checkpoint)
        # This frame outlives start-up (with stat loggers on, gc.get_referrers showed it
        # as the AsyncLLM's last referrer after shutdown()): a local here would keep the
        # AsyncLLM alive until interpreter exit, where its __del__ fails noisily.
        del llm
        return engine

    @property
    def dtype(self):
        """The torch dtype the engine runs the model in (vLLM's resolution of ``--dtype``)."""
        return self._llm.model_config.dtype

    @property
    def alive(self) -> bool:
        return self._llm is not None and not self._llm.errored

    @property
    def unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()

    def audio_tokens(self, num_samples: int) -> int:
        return audio_token_count(num_samples, *self._windowing)

    def load(self) -> tuple[int, int]:
        """(running, waiting) segment requests in the scheduler. Requests aborted
        while queued leave no step behind to report it: with nothing unfinished
        in this process, the queue is empty whatever the last step said."""
        load = self._scheduler_load
        if load is None or self.unfinished_requests == 0:
            return 0, 0
        return load.running, load.waiting

    async def generate(
        self, request: SegmentRequest, request_id: str | None = None
    ) -> AsyncIterator[SegmentResult]:
        """Yield cumulative results; cancelling the iteration aborts the engine request."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            # The sampled token's own logprob: segments report avg_logprob.
            logprobs=0,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.CUMULATIVE if request.stream
            else RequestOutputKind.FINAL_ONLY,
            prompt_logprobs=0 if request.score_last else None,
        )
        prompt = {
            "prompt_token_ids": request.prompt_token_ids,
            "multi_modal_data": {"audio": (request.audio, SAMPLE_RATE)},
        }
        request_id = request_id or uuid.uuid4().hex
        try:
            engine_input = await self._renderer.render(prompt)
            async for output in self._llm.generate(engine_input, params, request_id,
                                                   priority=request.priority):
                yield _segment_result(output, request.score_last)
        except (EngineDeadError, EngineGenerateError) as exc:
            raise EngineError(f"The inference engine failed: {exc or type(exc).__name__}") from exc

    def shutdown(self) -> None:
        # Drop the reference too: AsyncLLM.__del__ would otherwise shut down again
        # at interpreter exit, when the modules it needs are already gone.
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()


class RenderedTogether:
    """Renders the prompts submitted in one event-loop turn, and releases them together.

    vLLM's front end turns a request's audio into features in one thread, request after
    request, and sends each to the engine core when it is done. A window's segments are
    submitted together, but the first would reach an idle engine core alone, and the
    core would start a step encoding it while the others are still being rendered.
    Released together, they reach the core in one burst, which it takes in whole
    (``granite_speech_server.vllm_plugin.intake``) and encodes in one step."""

    def __init__(self, renderer) -> None:
        self._renderer = renderer
        self._turn: list[tuple[dict, asyncio.Future]] | None = None
        self._renderings: set[asyncio.Task] = set()

    async def render(self, prompt: dict):
        """The engine input for ``prompt``, once every prompt of its turn is rendered."""
        loop = asyncio.get_running_loop()
        if self._turn is None:
            # Runs after every task that is ready in this turn has added its prompt.
            self._turn = []
            loop.call_soon(self._render_turn)
        rendered = loop.create_future()
        self._turn.append((prompt, rendered))
        return await rendered

    def _render_turn(self) -> None:
        turn, self._turn = self._turn, None
        task = asyncio.ensure_future(self._render_all(turn))
        self._renderings.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._renderings.discard)

    async def _render_all(self, turn: list[tuple[dict, asyncio.Future]]) -> None:
        # Each prompt on its own (vLLM's renderer takes them one at a time anyway), so a
        # bad one fails only its own request.
        outcomes = await asyncio.gather(
            *(self._renderer.render_cmpl_async([prompt]) for prompt, _ in turn),
            return_exceptions=True)
        for (_, rendered), outcome in zip(turn, outcomes):
            if rendered.done():  # its request was cancelled meanwhile
                continue
            if isinstance(outcome, BaseException):
                rendered.set_exception(outcome)
            else:
                rendered.set_result(outcome[0])


def _segment_result(output, score_last: int = 0) -> SegmentResult:
    completion = output.outputs[0]
    logprobs = [
        TokenLogprob(step[token].decoded_token or "", step[token].logprob)
        for step, token in zip(completion.logprobs or [], completion.token_ids)
    ]
    prompt_ids = output.prompt_token_ids or []
    scored = [
        step[token].logprob
        for step, token in zip((output.prompt_logprobs or [])[-score_last:],
                               prompt_ids[-score_last:])
    ] if score_last else []
    return SegmentResult(
        scored=scored,
        text=completion.text,
        token_ids=list(completion.token_ids),
        logprobs=logprobs,
        prompt_tokens=len(output.prompt_token_ids or []),
        finished=output.finished,
    )


def _configure_engine_environment(settings: Settings) -> None:
    """The server's one write to ``os.environ``, made before vLLM is imported: vLLM reads
    its own settings from there, and the engine's processes inherit it.

    ``ENGINE_ENV`` tells the plugin in those processes that they are this server's engine,
    the only vLLM run whose internals it changes; their busy-wait (``shm_wait``) and
    intake (``intake``) settings go with it. On a CPU-only machine vLLM needs the KV cache
    size up front. With JSON logs, vLLM's loggers propagate to the server's one handler
    rather than print in their own text format (vLLM decides when it is imported)."""
    import torch

    os.environ[ENGINE_ENV] = "1"
    if settings.engine_spin_ms is not None:
        os.environ[shm_wait.SPIN_MS_ENV] = f"{settings.engine_spin_ms}"
    if settings.engine_gather_ms is not None:
        os.environ[intake.GATHER_MS_ENV] = f"{settings.engine_gather_ms}"
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.cpu_kv_cache_gib}")
    if settings.log_format == "json":
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
