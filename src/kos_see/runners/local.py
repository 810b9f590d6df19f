"""The local Python runner: one isolated process per attempt.

Each attempt gets a fresh private working directory (removed afterwards),
an environment scrubbed to an allowlist, its input as ``input.json``, an
event channel of its own, resource limits, and its own session and process
group. A timeout, a cancel or a shutdown stops the whole group, TERM first and
KILL after a grace; once the leader has exited, the group is killed again so
that no grandchild outlives the attempt.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import shutil
import signal
import stat
import time
from pathlib import Path

from kos_see.runners import secrets
from kos_see.runners.base import (
    AttemptControl,
    AttemptOutcome,
    AttemptSpec,
    OnEvents,
    OnStarted,
)
from kos_see.runners.cgroups import AttemptGroup, Cgroups
from kos_see.runners.channel import CappedOutput, EventChannel
from kos_see.runners.launch import ColdLauncher, Exit, Launcher

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05
KILL_RECHECK = 0.5
READ_SIZE = 65536


class LocalPythonRunner:
    name = "local_python"

    def __init__(
        self,
        launcher: Launcher | None = None,
        secrets_dir: Path | None = None,
        cgroups: Cgroups | None = None,
    ) -> None:
        self.launcher = launcher or ColdLauncher()
        self.secrets_dir = secrets_dir  # where the engine keeps secret values
        self.cgroups = cgroups  # None: rlimits only

    def process_parents(self) -> list[int]:
        pid = getattr(self.launcher, "server_pid", None)
        return [] if pid is None else [pid]

    def close(self) -> None:
        close = getattr(self.launcher, "close", None)
        if close is not None:
            close()

    def run(
        self,
        spec: AttemptSpec,
        control: AttemptControl,
        on_started: OnStarted,
        on_events: OnEvents,
    ) -> AttemptOutcome:
        prepare_workdir(spec)
        group = None
        try:
            try:
                secrets.deliver(spec.secrets, self.secrets_dir, spec.workdir)
            except secrets.SecretMissing as exc:
                return AttemptOutcome(
                    status="failed", error_kind="secret_missing", error=str(exc)
                )
            if spec.prepare is not None:
                refused = spec.prepare(spec.workdir)
                if refused is not None:
                    return refused
            group = self._group(spec)
            outcome = self._run(spec, control, on_started, on_events, group)
            if group is not None:
                _memory_verdict(spec, outcome, group)
            if spec.collect is not None:
                spec.collect(spec.workdir, outcome)
            return outcome
        finally:
            if group is not None:
                group.remove()
            if not spec.keep_workdir:
                remove_workdir(spec.workdir)

    def _group(self, spec: AttemptSpec) -> AttemptGroup | None:
        limits = spec.limits
        # A group costs a few file writes per attempt: only for a ceiling.
        wanted = limits.memory_mb is not None or limits.processes is not None
        if self.cgroups is None or not spec.isolate or not wanted:
            return None
        return self.cgroups.create(
            f"{spec.task_id}-{spec.attempt}", limits.memory_mb, limits.processes
        )

    def _run(
        self,
        spec: AttemptSpec,
        control: AttemptControl,
        on_started: OnStarted,
        on_events: OnEvents,
        group: AttemptGroup | None = None,
    ) -> AttemptOutcome:
        pipes = _Pipes()
        try:
            env = attempt_env(spec, pipes.events_w)
            launch_spec = child_spec(spec)
            if group is not None:
                launch_spec["cgroup_procs"] = group.procs_files
            try:
                process = self.launcher.launch(
                    launch_spec,
                    env,
                    {
                        "stdout": pipes.out_w,
                        "stderr": pipes.err_w,
                        "events": pipes.events_w,
                    },
                )
            except OSError as exc:
                return AttemptOutcome(
                    status="failed",
                    retryable=True,
                    error_kind="launch",
                    error=f"the attempt's process could not start: {exc}",
                )
            pipes.close_write_ends()
            on_started(process.pid, time.time())
            try:
                supervisor = _Supervisor(spec, control, process.pid, pipes, on_events)
                supervisor.watch(process.wait_fd())
                _kill_group(process.pid, signal.SIGKILL)
                exit_info = process.reap()
            finally:
                process.close()
            return classify(spec, supervisor, exit_info, control)
        finally:
            pipes.close()


class _Pipes:
    def __init__(self) -> None:
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        self.events_r, self.events_w = os.pipe2(os.O_CLOEXEC)
        self._write_open = True
        for fd in (self.out_r, self.err_r, self.events_r):
            os.set_blocking(fd, False)

    def close_write_ends(self) -> None:
        if self._write_open:
            for fd in (self.out_w, self.err_w, self.events_w):
                os.close(fd)
            self._write_open = False

    def close(self) -> None:
        self.close_write_ends()
        for fd in (self.out_r, self.err_r, self.events_r):
            os.close(fd)


class _Supervisor:
    """Watches one attempt: its output, its events, its deadline, stop requests."""

    def __init__(
        self,
        spec: AttemptSpec,
        control: AttemptControl,
        pid: int,
        pipes: _Pipes,
        on_events: OnEvents,
    ) -> None:
        self.spec = spec
        self.control = control
        self.pid = pid
        self.pipes = pipes
        self.on_events = on_events
        self.stdout = CappedOutput(spec.output_cap)
        self.stderr = CappedOutput(spec.output_cap)
        self.channel = EventChannel(
            spec.event_cap, spec.result_cap, spec.event_bytes_cap
        )
        self.started = time.monotonic()
        self.deadline = self.started + spec.timeout
        self.timed_out = False
        self.kill_at: float | None = None
        self.last_flush = self.started

    def watch(self, exit_fd: int) -> None:
        sinks = {
            self.pipes.out_r: self.stdout.feed,
            self.pipes.err_r: self.stderr.feed,
            self.pipes.events_r: self.channel.feed,
        }
        with selectors.DefaultSelector() as selector:
            for fd in sinks:
                selector.register(fd, selectors.EVENT_READ)
            selector.register(exit_fd, selectors.EVENT_READ)
            selector.register(self.control.fileno, selectors.EVENT_READ)
            exited = False
            while not exited:
                for key, _ in selector.select(self._wait_time()):
                    if key.fd == exit_fd:
                        exited = True
                    elif key.fd == self.control.fileno:
                        self._stop_requested()
                    elif not _read_into(key.fd, sinks[key.fd]):
                        selector.unregister(key.fd)
                self._check_deadline()
                self._flush(force=False)
        # The leader is gone; take what it (or a grandchild) left in the pipes.
        for fd, sink in sinks.items():
            _read_into(fd, sink, until_empty=True)
        self.channel.finish()
        self._flush(force=True)

    def _wait_time(self) -> float:
        now = time.monotonic()
        limit = self.kill_at if self.kill_at is not None else self.deadline
        wait = max(0.0, limit - now)
        if self.channel.pending or self.channel.progress is not None:
            wait = min(wait, max(0.0, self.last_flush + FLUSH_INTERVAL - now))
        return wait

    def _stop_requested(self) -> None:
        try:
            os.read(self.control.fileno, 64)
        except BlockingIOError:
            pass
        if self.kill_at is None:
            self._terminate()

    def _check_deadline(self) -> None:
        now = time.monotonic()
        if self.kill_at is None and now >= self.deadline:
            self.timed_out = self.control.reason is None
            self._terminate()
        elif self.kill_at is not None and now >= self.kill_at:
            _kill_group(self.pid, signal.SIGKILL)
            # KILL cannot be ignored; look again shortly until the exit shows.
            self.kill_at = now + KILL_RECHECK

    def _terminate(self) -> None:
        _kill_group(self.pid, signal.SIGTERM)
        self.kill_at = time.monotonic() + self.spec.kill_grace

    def _flush(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < FLUSH_INTERVAL:
            return
        self.last_flush = now
        events, progress = self.channel.take()
        if events or progress is not None:
            self.on_events(events, progress)


def _memory_verdict(
    spec: AttemptSpec, outcome: AttemptOutcome, group: AttemptGroup
) -> None:
    """Name memory as the cause when the kernel killed the attempt for it
    (its cgroup's OOM count rose) or it ran out of its address space."""
    peak = group.peak_memory_kb()
    if peak is not None:
        outcome.extra["cgroup_peak_kb"] = peak
    limit = spec.limits.memory_mb
    out_of_space = (outcome.error or "").startswith("MemoryError:")
    # The kernel may kill one process of the attempt (its largest); the rest
    # then fail or run on to the timeout: either way memory was the cause.
    ended_badly = outcome.status in ("failed", "timed_out")
    if ended_badly and (group.oom_killed() or out_of_space):
        outcome.extra["killed_by"] = "memory"
        outcome.status = "failed"
        outcome.error_kind = "memory"
        outcome.retryable = False  # the same input needs the same memory
        if not out_of_space:
            outcome.error = (
                f"killed for memory: the attempt used more than its limit of "
                f"{limit} MiB (limits.memory_mb)"
            )


def _read_into(fd: int, sink, until_empty: bool = False) -> bool:  # type: ignore[no-untyped-def]
    """Read what is there; False at end of stream."""
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return False
            raise
        if not data:
            return False
        sink(data)
        if not until_empty:
            return True


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # The group id was recycled by a process we do not own: nothing of ours.
        pass


def classify(
    spec: AttemptSpec, supervisor: _Supervisor, exit_info: Exit, control: AttemptControl
) -> AttemptOutcome:
    channel = supervisor.channel
    outcome = AttemptOutcome(
        status="failed",
        exit_code=exit_info.exit_code,
        signal=exit_info.signal,
        cpu_seconds=exit_info.cpu_seconds,
        peak_rss_kb=exit_info.peak_rss_kb,
        stdout=supervisor.stdout.text(),
        stderr=supervisor.stderr.text(),
        stdout_bytes=supervisor.stdout.total,
        stderr_bytes=supervisor.stderr.total,
        events_dropped=channel.dropped,
    )
    if control.reason is not None:
        outcome.status = control.reason
        outcome.error = {
            "cancelled": "cancelled while running",
            "released": "stopped by the engine's shutdown; back to the queue",
            "lost": "the worker lost its lease; stopped",
        }[control.reason]
        outcome.error_kind = control.reason
        return outcome
    if supervisor.timed_out:
        outcome.status, outcome.retryable, outcome.error_kind = (
            "timed_out",
            True,
            "timeout",
        )
        outcome.error = (
            f"ran past its timeout of {spec.timeout:g}s; its process group got "
            f"TERM, and KILL {spec.kill_grace:g}s later if still alive"
        )
        return outcome
    if exit_info.exit_code == 0 and channel.error is None:
        if channel.result_unreadable is not None:
            outcome.error_kind = "result_unreadable"
            outcome.error = f"the result is not JSON: {channel.result_unreadable}"
            return outcome
        if channel.result_too_large:
            outcome.error_kind = "result_too_large"
            outcome.error = f"the result is larger than {spec.result_cap} bytes"
            return outcome
        outcome.status, outcome.result = "succeeded", channel.result or "null"
        return outcome
    outcome.retryable = True if channel.error is None else channel.error["retryable"]
    outcome.error_kind = "signal" if exit_info.signal else "exit"
    outcome.error = _failure_message(exit_info, channel, outcome.stderr, spec)
    return outcome


def _failure_message(
    exit_info: Exit, channel: EventChannel, stderr: str, spec: AttemptSpec
) -> str:
    if exit_info.signal is not None:
        name = signal.Signals(exit_info.signal).name
        text = f"killed by signal {name} ({exit_info.signal})"
        cpu_limit = spec.limits.cpu_seconds
        if (
            exit_info.signal in (signal.SIGXCPU, signal.SIGKILL)
            and cpu_limit
            and (exit_info.cpu_seconds >= cpu_limit - 0.5)
        ):
            text += f": CPU time limit of {cpu_limit}s exceeded"
        return text
    if channel.error is not None:
        return channel.error["message"] or f"exited with code {exit_info.exit_code}"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    detail = f": {last[-1][:500]}" if last else ""
    return f"exited with code {exit_info.exit_code}{detail}"


def child_spec(spec: AttemptSpec) -> dict[str, object]:
    entry_file, _, function = spec.entrypoint.partition(":")
    return {
        "service_dir": str(spec.service_dir),
        "entry_file": entry_file,
        "entry_function": function or None,
        "workdir": str(spec.workdir),
        "parent_pid": os.getpid(),
        "limits": spec.limits.model_dump() if spec.isolate else {},
    }


def attempt_env(spec: AttemptSpec, events_fd: int) -> dict[str, str]:
    base = dict(spec.env) if spec.isolate else dict(os.environ)
    base.update(
        {
            "HOME": str(spec.workdir),
            "TMPDIR": str(spec.workdir / "tmp"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "KOS_SEE_TASK_ID": spec.task_id,
            "KOS_SEE_ATTEMPT": str(spec.attempt),
            "KOS_SEE_WORKDIR": str(spec.workdir),
            "KOS_SEE_INPUT": str(spec.workdir / "input.json"),
            "KOS_SEE_EVENTS_FD": str(events_fd),
        }
    )
    if spec.secrets:
        base["KOS_SEE_SECRETS_DIR"] = str(spec.workdir / "secrets")
    return base


def prepare_workdir(spec: AttemptSpec) -> None:
    spec.workdir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if spec.workdir.exists():
        remove_workdir(spec.workdir)
    spec.workdir.mkdir(mode=0o700)
    (spec.workdir / "tmp").mkdir(mode=0o700)
    (spec.workdir / "input.json").write_text(spec.input_text, encoding="utf-8")


def remove_workdir(path: Path) -> None:
    def _unlock(func, target, _exc):  # type: ignore[no-untyped-def]
        # A service may have made its files read-only; it cannot keep them.
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
            func(target)
        except OSError:
            log.warning(
                "working directory not fully removed",
                extra={"action": "workdir_leftover", "path": str(target)},
            )

    shutil.rmtree(path, onerror=_unlock)
