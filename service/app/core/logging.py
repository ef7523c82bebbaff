"""Structured logging: one JSON object per line, each carrying the id of the request that produced it.

The request id lives in a context variable set by the request middleware, so any `logging` call made while
serving a request (in the event loop or in a threadpool worker started from it) is tagged without passing it
around. `configure_logging(settings)` installs the formatter on the root logger once per process.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.app.core.config import Settings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed through `extra=` and is emitted as a field.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "color_message"}  # uvicorn's ANSI-coloured duplicate of the message
)
_HANDLER_NAME = "rag-json"


class JsonFormatter(logging.Formatter):
    """Formats a record as a single-line JSON object: time, level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _PlainFormatter(logging.Formatter):
    """Human-readable lines for local development (LOG_JSON=false), still showing the request id."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = request_id_var.get()
        return f"{line} [request_id={request_id}]" if request_id else line


#: Set in a request's task when the shutdown cut it after its response had started (service.app.api.middleware
#: logs the cut in one line): uvicorn then logs "ASGI callable returned without completing response" at ERROR
#: for it, which `CutRequestFilter` drops.
CUT_AFTER_RESPONSE_STARTED: ContextVar[bool] = ContextVar("cut_after_response_started", default=False)
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class CutRequestFilter(logging.Filter):
    """Drops uvicorn's line about an incomplete response for a request the shutdown cut (already logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UVICORN_INCOMPLETE and CUT_AFTER_RESPONSE_STARTED.get())


def configure_logging(settings: Settings) -> None:
    """Route the root logger (and uvicorn's) to stdout with the JSON formatter at LOG_LEVEL; idempotent."""
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        JsonFormatter()
        if settings.log_json
        else _PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root.addHandler(handler)
    # uvicorn installs its own handlers; send its records through ours so every line has one format.
    # Its access log is replaced by the request middleware's line, which knows the request id and route.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, CutRequestFilter) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(CutRequestFilter())
    logging.getLogger("uvicorn.access").handlers.clear()
    logging.getLogger("uvicorn.access").propagate = False
    # Libraries' warnings.warn (e.g. qdrant-client's version check, from a thread of its own) become log lines
    # in the same format ("py.warnings"), not raw text on stderr, where `python -m service` keeps its one line.
    logging.captureWarnings(True)
