"""Helper for service authors: read inputs, report progress, return a result.

A service's process talks to the engine over the attempt protocol: its input
is a JSON file named by ``KOS_SEE_INPUT``, and it writes JSON lines to the
file descriptor named by ``KOS_SEE_EVENTS_FD``. This module wraps both::

    from kos_see import service

    data = service.inputs()
    for i, item in enumerate(items):
        service.progress(i + 1, len(items), message=item)
    service.result({"count": len(items)})

A function entrypoint (``entrypoint = "main.py:run"``) needs none of this
for input and result: it is called with the inputs and returns the result.
Any program in any language can speak the same protocol.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

_channel = None


class ServiceFailure(Exception):
    """Raise (or call ``fail``) to end the attempt as failed with a message."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def _emit(record: dict[str, Any]) -> None:
    global _channel
    if _channel is None:
        fd = os.environ.get("KOS_SEE_EVENTS_FD")
        if fd is None:
            # Run outside the engine (for example by hand): print events instead.
            print(json.dumps(record), file=sys.stderr)
            return
        _channel = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", closefd=False)
    _channel.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def inputs() -> Any:
    """The task's input document."""
    path = os.environ.get("KOS_SEE_INPUT")
    if path is None:
        return json.loads(sys.stdin.read() or "{}")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def workdir() -> Path:
    """The attempt's private working directory (also the current directory)."""
    return Path(os.environ.get("KOS_SEE_WORKDIR", "."))


def progress(
    done: float, total: float | None = None, message: str | None = None
) -> None:
    _emit({"type": "progress", "done": done, "total": total, "message": message})


def log(message: str, level: str = "info", **fields: Any) -> None:
    _emit({"type": "log", "level": level, "message": message, **fields})


def output(data: Any) -> None:
    """A partial output, streamed to watchers before the result."""
    _emit({"type": "output", "data": data})


def result(value: Any) -> None:
    """The attempt's result document; the last one sent counts."""
    _emit({"type": "result", "value": value})


def fail(message: str, retryable: bool = False) -> None:
    """End the attempt as failed; ``retryable`` asks the engine to try again."""
    _emit({"type": "error", "message": message, "retryable": retryable})
    if _channel is not None:
        _channel.flush()
    raise SystemExit(3)
