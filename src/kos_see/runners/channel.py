"""Reading what an attempt's process sends: capped output and the event channel.

Neither ever holds more than its cap in memory, and undecodable bytes or
malformed lines become readable text or a dropped-event count, never an
exception in the worker.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from kos_see import strict_json

MAX_LINE = 4 * 1024 * 1024
# JSON may escape a lone surrogate (backslash-u d800); UTF-8 cannot hold one.
_SURROGATE = re.compile("[\ud800-\udfff]")
_RESULT_START = re.compile(rb'"type"\s*:\s*"result"')
# Fields the engine sets on every event; a service's log or output record
# may not forge them.
_RESERVED = frozenset({"id", "task_id", "attempt", "at", "kind", "state", "from"})


class CappedOutput:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def text(self) -> str:
        out = self.kept.decode("utf-8", errors="replace")
        if self.total > len(self.kept):
            out += f"\n[... {self.total - len(self.kept)} more bytes not kept]"
        return out


class EventChannel:
    """Parses JSON lines from the attempt into events, a result and an error.

    Progress reports between two flushes collapse into the latest one, since a
    watcher needs only the newest; log lines and partial outputs are all kept
    up to ``event_cap`` events and ``event_bytes_cap`` bytes in all. A line
    that is not strict JSON is refused with a warning; a result that is not
    makes ``result_unreadable`` say why, which fails the attempt.
    """

    def __init__(
        self, event_cap: int, result_cap: int, event_bytes_cap: int = 16 * 1024**2
    ) -> None:
        self.event_cap = event_cap
        self.result_cap = result_cap
        self.event_bytes_cap = event_bytes_cap
        self.kept_bytes = 0
        # A line must be able to hold the largest result that is accepted.
        self.max_line = max(MAX_LINE, result_cap + 65536)
        self.pending: list[tuple[float, str, dict[str, Any]]] = []
        self.progress: tuple[float | None, float | None, str | None] | None = None
        self._progress_event: dict[str, Any] | None = None
        self.kept = 0
        self.dropped = 0
        self.result: str | None = None
        self.result_too_large = False
        self.result_unreadable: str | None = None
        self.error: dict[str, Any] | None = None
        self._partial = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> None:
        self._partial += data
        while True:
            end = self._partial.find(b"\n")
            if end < 0:
                break
            line = bytes(self._partial[:end])
            del self._partial[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            self._line(line)
        if len(self._partial) > self.max_line:
            # Too long to keep: drop it through its newline, and say so. A
            # result this long is over the result cap, and fails as such.
            if _RESULT_START.search(bytes(self._partial[:200])):
                self.result_too_large = True
                self.result = None
            self._keep(
                "log",
                {
                    "level": "warning",
                    "message": f"event line over {self.max_line} bytes dropped",
                },
            )
            self._partial.clear()
            self._skipping = True
            self.dropped += 1

    def finish(self) -> None:
        if self._partial and not self._skipping:
            self._line(bytes(self._partial))
        self._partial.clear()

    def take(self) -> tuple[list[tuple[float, str, dict[str, Any]]], Any]:
        """Events since the last call, and the newest progress if it changed."""
        if self._progress_event is not None:
            self.pending.append((time.time(), "progress", self._progress_event))
            self._progress_event = None
        events, self.pending = self.pending, []
        progress, self.progress = self.progress, None
        return events, progress

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        text = line.decode("utf-8", errors="replace")
        try:
            record = strict_json.loads(text, allow_surrogates=True)
        except strict_json.NotJson as exc:
            self._unreadable(line, str(exc))
            return
        if not isinstance(record, dict):
            self._unreadable(line, "not a JSON object")
            return
        record = _storable(record)
        kind = record.get("type")
        if kind == "result":
            self._result(record.get("value"))
        elif kind == "error":
            self.error = {
                "message": str(record.get("message", ""))[:4000],
                "retryable": bool(record.get("retryable", False)),
            }
        elif kind == "progress":
            self._progress(record)
        elif kind in ("log", "output"):
            record.pop("type")
            self._keep(
                kind,
                {
                    (f"service_{key}" if key in _RESERVED else key): value
                    for key, value in record.items()
                },
            )
        else:
            self._keep(
                "log", {"level": "warning", "message": f"unknown event type {kind!r}"}
            )

    def _unreadable(self, line: bytes, reason: str) -> None:
        if _RESULT_START.search(line[:200]):
            # The service meant a result: succeeding with none would hide it.
            self.result = None
            self.result_unreadable = reason
        self._warn(
            "unreadable event line: "
            + line[:200].decode("utf-8", errors="replace")
            + f" ({reason})"
        )

    def _warn(self, message: str) -> None:
        self._keep("log", {"level": "warning", "message": message})

    def _result(self, value: Any) -> None:
        self.result_unreadable = None
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text.encode()) > self.result_cap:
            self.result_too_large = True
            self.result = None
        else:
            self.result_too_large = False
            self.result = text

    def _progress(self, record: dict[str, Any]) -> None:
        done = _number(record.get("done"))
        total = _number(record.get("total"))
        for key, number in (("done", done), ("total", total)):
            if record.get(key) is not None and number is None:
                self._warn(
                    f"progress event refused: {key} is {record.get(key)!r:.100}, "
                    "not a number"
                )
                return
        message = record.get("message")
        message = None if message is None else str(message)[:500]
        self.progress = (done, total, message)
        self._progress_event = {"done": done, "total": total, "message": message}

    def _keep(self, kind: str, data: dict[str, Any]) -> None:
        size = len(
            json.dumps(data, ensure_ascii=False, default=str).encode(errors="replace")
        )
        if self.kept >= self.event_cap or self.kept_bytes + size > self.event_bytes_cap:
            self.dropped += 1
            return
        self.kept += 1
        self.kept_bytes += size
        self.pending.append((time.time(), kind, data))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _storable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (a lone surrogate
    becomes U+FFFD), since strings from the channel end up in the store."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value
