"""Process logging: one handler on the root logger, as text or one JSON object a line.

Every record logged while a request is being served carries that request's id
(``request_id``), set by the request middleware through a context variable, so
an error deep in the engine wrapper can be matched to its access-log line.
Records carry no request content: the access log names the request's shape
(method, path, status, latency, audio duration, format), never its audio,
headers or keys.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from typing import Literal

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "granite_speech_request_id", default=None)

ACCESS_LOGGER = "granite_speech.access"

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", "color_message"}


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (None outside a request) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def record_fields(record: logging.LogRecord) -> dict:
    """The fields given with ``extra=`` (and the request id), in the order given."""
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields, "exc_info"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in record_fields(record).items()
                      if value is not None})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual one-line format, with the extra fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{key}={value}" for key, value in record_fields(record).items()
                          if value is not None)
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {fields}{newline}{rest}"


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Replace the root logger's handlers with one stderr handler. uvicorn's loggers
    propagate to it (the CLI gives uvicorn no logging config of its own); in JSON
    mode vLLM's do too, rather than printing their own text format (the engine's start
    tells vLLM so: ``granite_speech_server.asr.vllm_engine``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
