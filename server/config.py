"""Server settings: one validated object built from CLI flags and environment.

Every field is a ``--kebab-case`` flag and a ``GRANITE_SPEECH_<NAME>`` environment
variable (flags win). Nothing reads the environment at import time: the CLI
builds a ``Settings`` once and hands it to ``create_app``; tests build their own.
"""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "ibm-granite/granite-4.0-1b-speech"

CommaList = Annotated[list[str], NoDecode]
"""A repeatable flag; from the environment, a comma-separated list."""


class Settings(BaseSettings):
    """OpenAI-compatible transcription and translation server for Granite speech models.

    Every option can also be set as an environment variable GRANITE_SPEECH_<NAME>,
    e.g. GRANITE_SPEECH_MAX_MODEL_LEN=2048; list options take comma-separated values.
    """

    model_config = SettingsConfigDict(
        env_prefix="GRANITE_SPEECH_",
        cli_prog_name="granite-speech-server",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
        protected_namespaces=(),
        # Validation errors would otherwise print the input, API keys included.
        hide_input_in_errors=True,
    )

    # --- Model and HTTP -------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face model id or local checkpoint directory.",
    )
    served_model_name: CommaList = Field(
        default_factory=list,
        description="Name clients pass as `model` (repeatable). "
        "Default: the model id and its last path component.",
    )
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the server and uvicorn."
    )

    # --- Operations: auth, admission, timeouts, shutdown, logs -----------------
    api_key: CommaList = Field(
        default_factory=list,
        repr=False,
        description="API key clients must send as `Authorization: Bearer <key>` "
        "(repeatable; from the environment, comma-separated). No key: no authentication.",
    )
    api_key_file: Path | None = Field(
        None,
        description="File with more API keys, one per line (blank lines and # comments "
        "ignored). Read once at start-up.",
    )
    auth_all_endpoints: bool = Field(
        False,
        description="Require the API key on /health, /ready, /metrics, /docs and "
        "/openapi.json too (by default they stay open for probes, scrapers and browsers).",
    )
    max_concurrent_requests: int = Field(
        64, ge=0, description="Audio requests served at once; more get an immediate 429 "
        "with Retry-After. 0: no limit."
    )
    max_inflight_audio_seconds: float = Field(
        14400.0,
        ge=0,
        description="Seconds of audio in flight across admitted requests; an upload that "
        "would exceed it gets a 429 with Retry-After. At least --max-audio-seconds. 0: no limit.",
    )
    request_timeout_seconds: float = Field(
        600.0,
        ge=0,
        description="Longest a request may take from arrival to its last byte; past it the "
        "engine work is aborted and the answer is 504 (an error event once a stream began). "
        "0: no limit.",
    )
    realtime_max_sessions: int = Field(
        32, ge=0, description="Realtime WebSocket sessions open at once; more are refused "
        "before the upgrade (429). 0: no limit."
    )
    realtime_max_buffer_seconds: float = Field(
        120.0, gt=0, description="Uncommitted audio a realtime session may hold (manual "
        "commits); an append beyond it is dropped with an error event."
    )
    realtime_idle_timeout_seconds: float = Field(
        300.0, ge=0, description="A realtime session that sends nothing this long is closed. "
        "0: never."
    )
    shutdown_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, keep listening this long with /ready at 503 and new audio "
        "requests refused (503), so load balancers notice, before closing the listener.",
    )
    shutdown_grace_seconds: float = Field(
        25.0,
        ge=0,
        description="On SIGTERM, how long in-flight requests may take to finish after the "
        "listener closed; then they are cancelled and the process exits.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format: text, or one JSON object per line."
    )

    # --- vLLM engine ----------------------------------------------------------
    max_model_len: int = Field(
        2048, ge=256, description="Context length in tokens (audio + prompt + output)."
    )
    dtype: str = Field(
        "auto", description="Weight and activation dtype (auto, bfloat16, float16, float32). "
        "auto: vLLM's choice (bfloat16 for the real checkpoint), but float32 on an x86 CPU "
        "without bfloat16 instructions, where bfloat16 is emulated and several times slower.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use (GPU only)."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="Most sequences the engine batches at once (vLLM default if unset)."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs to shard the model over.")
    mm_processor_cache_gib: float = Field(
        0,
        ge=0,
        description="vLLM's cache of processed audio inputs, in GiB, held once in the server "
        "and once in the engine core. Uploads rarely repeat, so it is off: on, it only grows "
        "memory (by up to twice this; vLLM's own default is 4).",
    )
    cpu_kv_cache_gib: int = Field(
        2,
        ge=1,
        description="KV cache size in GiB on CPU-only machines "
        "(VLLM_CPU_KVCACHE_SPACE, unless that is already set).",
    )
    preprocessing_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="How far below the engine's CPU priority the threads that decode an "
        "upload and detect its speech run (OS niceness, added to the server's). When CPUs "
        "are short, the engine's steps, which every request waits on, go first. 0: equal.",
    )
    preprocess_workers: int | None = Field(
        None,
        ge=0,
        description="Processes that decode uploads and detect their speech beside the API "
        "process, which then only serves HTTP and drives the engine. Default: one per CPU "
        "core the server may use (its affinity within a cgroup CPU limit), at most 8. 0: "
        "threads of the API process, bound to its one interpreter.",
    )
    engine_spin_ms: float | None = Field(
        None,
        ge=0,
        description="How long vLLM's engine core and worker busy-wait for each other's next "
        "message before they sleep on it, in ms. Default: 2 on CPU-only machines, where the "
        "spin takes CPU from the work; vLLM's own 1000 on GPUs.",
    )
    engine_gather_ms: float | None = Field(
        None,
        ge=0,
        description="How long vLLM's engine core, woken from idle by a request, waits for "
        "more before its next step, in ms: a window's segments, which arrive one message at "
        "a time, are then encoded in one step. Default: 1. 0: not at all.",
    )
    enforce_eager: bool = Field(
        False, description="Disable CUDA graphs / compilation (faster start-up, slower decode)."
    )

    word_timestamps: bool = Field(
        True,
        description="Load the checkpoint's encoder and CTC head beside vLLM for word "
        "timestamps (timestamp_granularities[]=word) and word-timed subtitles.",
    )

    speculative_ctc: bool = Field(
        False,
        description="Self-speculative decoding: the CTC head's greedy transcript is taken as "
        "it is when confident, else verified by the LLM in one pass and only the rest "
        "decoded (non-streamed requests; needs --word-timestamps' CTC head).",
    )
    speculative_max_entropy: float = Field(
        0.3, ge=0, description="A CTC draft whose every frame has entropy at most this "
        "(nats) is accepted without the LLM."
    )
    speculative_min_probability: float = Field(
        0.3, gt=0, le=1, description="Draft tokens are kept while the LLM gives each at "
        "least this probability."
    )

    # --- Audio and limits -----------------------------------------------------
    max_upload_mb: float = Field(100.0, gt=0, description="Largest accepted upload, in MB.")
    min_audio_seconds: float = Field(
        0.1, ge=0, description="Shortest accepted audio, in seconds (OpenAI's minimum is 0.1)."
    )
    max_audio_seconds: float = Field(
        7200.0, gt=0, description="Longest accepted audio, in seconds."
    )
    output_tokens_per_second: float = Field(
        10.0,
        gt=0,
        description="Output budget per second of audio. Speech runs at ~3-4 tokens/s; "
        "the budget stops a model that never emits end-of-text long before the context ends.",
    )
    output_tokens_floor: int = Field(
        24, ge=1, description="Output tokens every request may use, whatever its duration."
    )
    max_segment_seconds: float = Field(
        30.0,
        gt=1,
        le=90,
        description="Longest piece of audio sent to the model at once, in seconds. "
        "30 s = ~300 audio tokens + ~20 prompt + 324 output budget: a third of a 2048-token "
        "context (audio 10/s + output 10/s caps it near 100 s).",
    )
    min_segment_seconds: float = Field(
        1.0, ge=0, description="Shorter speech segments are merged into a neighbour "
        "(across a pause under 1 s, when the result fits)."
    )
    segment_padding_ms: int = Field(
        300, ge=0, le=2000, description="Audio kept around each segment's speech, in ms "
        "(the prefix_padding_ms of chunking_strategy=server_vad)."
    )
    vad_threshold: float = Field(
        0.5, gt=0, lt=1, description="Silero VAD speech probability threshold (chunking auto)."
    )
    vad_min_silence_ms: int = Field(
        500, ge=0, description="A pause at least this long may separate two segments "
        "(chunking auto)."
    )

    @field_validator("served_model_name", "api_key", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _audio_budget_holds_one_upload(self) -> Settings:
        if 0 < self.max_inflight_audio_seconds < self.max_audio_seconds:
            raise ValueError(
                f"max_inflight_audio_seconds ({self.max_inflight_audio_seconds:g}) is below "
                f"max_audio_seconds ({self.max_audio_seconds:g}): the longest accepted upload "
                "would be refused forever. Raise the first or lower the second.")
        return self

    def load_api_keys(self) -> list[str]:
        """The keys from --api-key and --api-key-file (read now)."""
        keys = [key.strip() for key in self.api_key if key.strip()]
        if self.api_key_file is not None:
            for line in self.api_key_file.read_text().splitlines():
                if (line := line.strip()) and not line.startswith("#"):
                    keys.append(line)
        return list(dict.fromkeys(keys))

    @property
    def model_names(self) -> list[str]:
        """Names a request's `model` field may use; the first is the canonical one."""
        if self.served_model_name:
            return list(dict.fromkeys(self.served_model_name))
        return list(dict.fromkeys([self.model, PurePath(self.model).name]))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)
