"""What every runner takes and gives back.

A runner gets an ``AttemptSpec`` (what to run, where, with which limits), an
``AttemptControl`` through which the worker may stop it, and two callbacks:
one when the process started, one for each batch of events it reports. It
returns an ``AttemptOutcome``; it never raises for anything the service did.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from kos_see.registry.manifest import Limits

StopReason = Literal["cancelled", "released", "lost"]
Status = Literal["succeeded", "failed", "timed_out", "cancelled", "released", "lost"]
EventBatch = list[tuple[float, str, dict[str, Any]]]


@dataclass(frozen=True)
class AttemptSpec:
    task_id: str
    attempt: int
    service_dir: Path
    entrypoint: str
    input_text: str
    timeout: float
    limits: Limits
    workdir: Path
    env: dict[str, str]
    isolate: bool = True
    kill_grace: float = 3.0
    output_cap: int = 65536
    event_cap: int = 10000
    result_cap: int = 1048576
    keep_workdir: bool = False
    runner: str = "local_python"  # the task's (policy), else the manifest's
    secrets: tuple[str, ...] = ()  # granted at submit; delivered as files
    # Called with the working directory once it is made, before the process
    # starts (dependencies are fetched into it); an outcome returned ends the
    # attempt there. None: nothing to do.
    prepare: Callable[[Path], AttemptOutcome | None] | None = None
    # Called with the working directory and the outcome after the process
    # ended, before the directory is removed (out/ files are collected).
    collect: Callable[[Path, AttemptOutcome], None] | None = None
    event_bytes_cap: int = 16 * 1024 * 1024


@dataclass
class AttemptOutcome:
    status: Status
    retryable: bool = False
    result: str | None = None  # JSON text
    error: str | None = None
    error_kind: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    cpu_seconds: float | None = None
    peak_rss_kb: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    events_dropped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class AttemptControl:
    """The worker's handle to stop a running attempt from another thread.

    ``stop`` writes to a pipe that the runner watches beside the process's
    output, so a stop takes effect at once rather than at the next poll.
    """

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        self._lock = threading.Lock()
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def fileno(self) -> int:
        return self._read_fd

    def stop(self, reason: StopReason) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
        try:
            os.write(self._write_fd, b"x")
        except (BlockingIOError, OSError):
            pass

    def reset(self) -> None:
        with self._lock:
            self.reason = None
        try:
            while os.read(self._read_fd, 64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)


OnStarted = Callable[[int, float], None]
OnEvents = Callable[
    [EventBatch, tuple[float | None, float | None, str | None] | None], None
]


class Runner(Protocol):
    name: str

    def process_parents(self) -> list[int]:
        """Pids besides the worker's own that parent attempt processes (such
        as a fork server); the worker sweeps their children for orphans."""

    def close(self) -> None:
        """Release what the runner keeps between attempts."""

    def run(
        self,
        spec: AttemptSpec,
        control: AttemptControl,
        on_started: OnStarted,
        on_events: OnEvents,
    ) -> AttemptOutcome: ...
