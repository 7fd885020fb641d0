"""Structured logging: one JSON object per line, and never a byte string.

Services log events, not prose::

    log = get_logger(__name__)
    log.event("release.denied", level=logging.DEBUG, reason="measurement", principal=pid)

Field values must be numbers, strings, booleans or None (or short lists of them).  A value of
type ``bytes``/``bytearray``/``memoryview`` is never written: it is replaced by its length, so
that a key, a plaintext or a ciphertext cannot reach a log line by accident.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "StructuredLogger", "configure_logging", "get_logger"]

_SAFE = (str, int, float, bool, type(None))


def _scrub(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes withheld>"
    if isinstance(value, _SAFE):
        return value
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value[:32]]
    if isinstance(value, dict):
        return {str(k): _scrub(v) for k, v in list(value.items())[:32]}
    return f"<{type(value).__name__}>"


class StructuredLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry named fields."""

    def event(self, name: str, /, *, level: int = logging.INFO, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, name, extra={"sealserve_fields": fields}, stacklevel=2)


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(logging.getLogger(name), {})


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, event and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "sealserve_fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, _scrub(value))
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, separators=(",", ":"), default=str)


def configure_logging(level: str = "INFO", *, stream: Any = None) -> None:
    """Send sealserve's logs as JSON lines to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("sealserve")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    logging.Formatter.converter = time.gmtime
