"""The worker pool: one control thread that talks to the store, and one
thread per slot that drives a runner through an attempt.

Only the control thread writes to the store. Slots hand it their writes
(attempt started, events, attempt finished); it applies whatever has piled
up in one transaction, so that under load many tasks share a commit. Each
write carries its lease epoch, and the store refuses those from a lease that
has since been superseded.

On shutdown the pool stops leasing, gives running attempts a grace period,
then stops them and returns their tasks to the queue.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kos_see.config import EngineConfig
from kos_see.errors import ConfigError, ServiceChanged, StoreUnavailable
from kos_see.models import (
    AttemptEvents,
    AttemptFinished,
    AttemptStarted,
    AttemptWrite,
    Lease,
    ServiceRecord,
)
from kos_see.provenance.recorder import AttemptRecord, Recorder
from kos_see.queue.fair import Policy, Rules
from kos_see.queue.retry import RetryPolicy, next_state
from kos_see.registry import Manifest, Registry
from kos_see.runners.base import AttemptControl, AttemptOutcome, AttemptSpec, Runner
from kos_see.runners.local import remove_workdir
from kos_see.states import TaskState
from kos_see.store import Store
from kos_see.worker.reaper import OrphanSweeper, become_subreaper, kill_marked

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0
IDLE_WAIT = 5.0


def rules_from_config(config: EngineConfig, registry: Registry) -> Rules:
    """The lease rules: the queue policy, quotas, and each service's
    concurrency limit (the lower of config's and its manifests')."""
    queue_config, quotas = config.queue, config.quotas
    service_limits = dict(quotas.services)
    for record in registry.list():
        declared = record.manifest.get("max_concurrent")
        if declared is not None:
            current = service_limits.get(record.name)
            service_limits[record.name] = (
                declared if current is None else min(current, declared)
            )
    return Rules(
        policy=Policy(
            fair_share=queue_config.fair_share,
            batch_min_share=queue_config.batch_min_share,
            weights=dict(queue_config.tenant_weights),
            default_weight=queue_config.default_weight,
        ),
        tenant_max_running={t: q.max_running for t, q in quotas.tenants.items()},
        default_max_running=quotas.default.max_running,
        service_limits=service_limits,
        tenant_cpu_seconds={t: q.cpu_seconds for t, q in quotas.tenants.items()},
        default_cpu_seconds=quotas.default.cpu_seconds,
        cpu_window=quotas.window,
    )


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class _Outage:
    """Backoff while the store is unreachable, logged once when it starts and
    once when it ends."""

    START = 0.1
    MAX = 5.0

    def __init__(self) -> None:
        self.pause = 0.0
        self.since: float | None = None

    def begin(self, exc: Exception) -> float:
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "store unavailable; retrying with backoff",
                extra={"action": "store_unavailable", "error": str(exc)},
            )
        self.pause = min(self.MAX, max(self.START, self.pause * 2))
        return self.pause

    def over(self) -> None:
        if self.since is None:
            return
        log.warning(
            "store available again",
            extra={
                "action": "store_available",
                "down_seconds": round(time.monotonic() - self.since, 3),
            },
        )
        self.since, self.pause = None, 0.0


@dataclass
class _Running:
    lease: Lease
    control: AttemptControl


class WorkerPool:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        config: EngineConfig,
        runner: Runner,
        workdir_root: Path,
        owner: str | None = None,
        exclusive: bool = False,
        rng: random.Random | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.runner = runner
        self.workdir_root = workdir_root
        self.owner = owner or new_owner_id()
        # Exclusive: this pool is the only one serving its store, so any lease
        # held by another owner was left by a process that is gone.
        self.exclusive = exclusive
        self.rng = rng or random.Random()
        # Dependencies and provenance; None: attempts get neither.
        self.recorder = recorder
        execution = config.execution
        self.slots = execution.max_concurrent_tasks
        self.retry = RetryPolicy(
            config.queue.retry_backoff, config.queue.retry_base, config.queue.retry_cap
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._writes: list[AttemptWrite] = []
        self._running: dict[str, _Running] = {}
        self._inbox: queue.SimpleQueue[Lease | None] = queue.SimpleQueue()
        self._idle = self.slots
        self._stopping = False
        self._hurry = threading.Event()
        self._cancel_check = False
        self._threads: list[threading.Thread] = []
        self._control_thread: threading.Thread | None = None
        self._flushed = threading.Condition()
        self._flush_listeners: list[Callable[[list[AttemptWrite]], None]] = []
        self._sweeper = OrphanSweeper() if become_subreaper() else None
        self._rules = rules_from_config(config, registry)

    # lifecycle

    def start(self) -> None:
        self._check_workdir_root()
        now = time.time()
        rescued = self.store.rescue(
            now, foreign_owners_too=self.exclusive, owner=self.owner
        )
        if rescued:
            log.info(
                "tasks left by a stopped engine returned to the queue",
                extra={"action": "startup_rescue", "count": len(rescued)},
            )
        if rescued and self.exclusive:
            # Their main processes died with the engine that ran them; what
            # they started, in their group or out of it, was left running.
            kill_marked(set(rescued))
        for number in range(self.slots):
            thread = threading.Thread(
                target=self._slot_loop, name=f"slot-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._control_thread = threading.Thread(
            target=self._control_loop, name="pool-control", daemon=True
        )
        self._control_thread.start()
        log.info(
            "worker pool started",
            extra={"action": "pool_started", "owner": self.owner, "slots": self.slots},
        )

    def _check_workdir_root(self) -> None:
        """Fail at start, naming the folder, if attempts could not get a
        working directory; and clear what a killed engine left there."""
        root = self.workdir_root
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            probe = root / f".probe-{os.getpid()}"
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            raise ConfigError(
                f"attempts' working directories cannot be made in {root} "
                f"({exc.strerror}); set execution.workdir_root to a writable folder"
            ) from exc
        if self.exclusive and not self.config.execution.keep_workdirs:
            # Only this engine serves the home: everything here is left over
            # from attempts of an engine that did not stop cleanly.
            for leftover in root.iterdir():
                remove_workdir(leftover)

    def wake(self, reason: str = "submit") -> None:
        if reason == "cancel":
            self._cancel_check = True
        self._wake.set()

    def add_flush_listener(
        self, listener: Callable[[list[AttemptWrite]], None]
    ) -> None:
        self._flush_listeners.append(listener)

    def shutdown(self, grace: float | None = None) -> None:
        """Stop leasing; let running attempts finish within ``grace``; stop
        the rest and return their tasks to the queue."""
        grace = self.config.execution.shutdown_grace if grace is None else grace
        self._stopping = True
        self._wake.set()
        deadline = time.monotonic() + grace
        while (
            self.running_count()
            and time.monotonic() < deadline
            and not self._hurry.is_set()
        ):
            time.sleep(0.05)
        with self._lock:
            still = list(self._running.values())
        for running in still:
            running.control.stop("released")
        if still:
            log.info(
                "running attempts stopped for shutdown",
                extra={"action": "attempts_released", "count": len(still)},
            )
        limit = time.monotonic() + self.config.execution.kill_grace + 5
        while self.running_count() and time.monotonic() < limit:
            time.sleep(0.05)
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
        self._wake.set()
        if self._control_thread is not None:
            self._control_thread.join(timeout=5)
        self._flush()
        if self._sweeper is not None:
            # The attempts are over: whatever of theirs escaped goes now,
            # before the fork server (the parent of some of them) stops.
            self._sweeper.sweep(set(), self.runner.process_parents())
        self.runner.close()
        try:
            self.workdir_root.rmdir()  # only if empty; a kept one stays
        except OSError:
            pass
        log.info(
            "worker pool stopped", extra={"action": "pool_stopped", "owner": self.owner}
        )

    def hurry(self) -> None:
        """Cut a shutdown's grace period short: stop running attempts now."""
        self._hurry.set()

    def running_count(self) -> int:
        with self._lock:
            return len(self._running)

    # control thread

    def _control_loop(self) -> None:
        execution = self.config.execution
        next_renew = time.monotonic() + execution.heartbeat_seconds
        next_rescue = time.monotonic() + execution.lease_seconds / 2
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        idle_until = time.monotonic()
        outage = _Outage()
        while True:
            now_m = time.monotonic()
            wait = min(next_renew, next_rescue, next_sweep, idle_until) - now_m
            self._wake.wait(max(0.0, wait))
            self._wake.clear()
            try:
                self._flush()
                if self._stopping:
                    if not self._threads or not any(
                        t.is_alive() for t in self._threads
                    ):
                        return
                    continue
                now_m = time.monotonic()
                if self._cancel_check or now_m >= next_renew:
                    self._cancel_check = False
                    self._renew()
                    self._rules = rules_from_config(self.config, self.registry)
                    next_renew = now_m + execution.heartbeat_seconds
                if now_m >= next_rescue:
                    self.store.rescue(time.time())
                    next_rescue = now_m + execution.lease_seconds / 2
                if self._sweeper is not None and now_m >= next_sweep:
                    self._sweep()
                    next_sweep = now_m + SWEEP_INTERVAL
                idle_until = self._lease_more()
                outage.over()
            except StoreUnavailable as exc:
                # The server restarts or the network is cut: wait with backoff
                # and say so once; unflushed writes stay queued in order.
                idle_until = time.monotonic() + outage.begin(exc)
            except Exception:
                # The store may be briefly unavailable; nothing is lost, since
                # unflushed writes stay queued and leases are retried.
                log.exception(
                    "worker pool control step failed", extra={"action": "control_error"}
                )
                idle_until = time.monotonic() + 1.0

    def _lease_more(self) -> float:
        """Lease for the idle slots; returns when to look again if no wake-up comes."""
        with self._lock:
            free = self._idle
        if free <= 0:
            return time.monotonic() + IDLE_WAIT
        now = time.time()
        leases = self.store.lease(
            self.owner, free, now, self.config.execution.lease_seconds, self._rules
        )
        for lease in leases:
            with self._lock:
                self._idle -= 1
                self._running[lease.task_id] = _Running(lease, AttemptControl())
            self._inbox.put(lease)
        if len(leases) == free:
            return time.monotonic() + IDLE_WAIT
        due = self.store.next_ready_at()
        if due is None:
            return time.monotonic() + IDLE_WAIT
        return time.monotonic() + min(IDLE_WAIT, max(0.0, due - time.time()) + 0.001)

    def _renew(self) -> None:
        with self._lock:
            held = [(tid, r.lease.epoch) for tid, r in self._running.items()]
        if not held:
            return
        renewal = self.store.renew(
            self.owner, held, time.time(), self.config.execution.lease_seconds
        )
        with self._lock:
            for task_id in renewal.lost:
                if task_id in self._running:
                    log.warning(
                        "lease lost; stopping its attempt",
                        extra={"action": "lease_lost", "task_id": task_id},
                    )
                    self._running[task_id].control.stop("lost")
            for task_id in renewal.cancel_requested:
                if task_id in self._running:
                    self._running[task_id].control.stop("cancelled")

    def _sweep(self) -> None:
        with self._lock:
            active = set(self._running)
        assert self._sweeper is not None
        self._sweeper.sweep(active, self.runner.process_parents())

    def _flush(self) -> None:
        with self._lock:
            batch, self._writes = self._writes, []
        if not batch:
            return
        try:
            self.store.apply(batch)
        except StoreUnavailable:
            # Nothing was written; keep the batch, in order, for the next try.
            with self._lock:
                self._writes[:0] = batch
            raise
        except Exception:
            # Some write cannot be stored at all (an engine bug); store the
            # others one by one so that one bad write never blocks the rest.
            log.exception(
                "attempt write batch refused; applying one by one",
                extra={"action": "batch_refused", "size": len(batch)},
            )
            for write in batch:
                self._apply_alone(write)
        for listener in self._flush_listeners:
            listener(batch)

    def _apply_alone(self, write: AttemptWrite) -> None:
        try:
            self.store.apply([write])
        except StoreUnavailable:
            with self._lock:
                self._writes.append(write)
            raise
        except Exception:
            # Dropped, and said so: the lease then expires and the rescuer
            # returns the task to the queue, so the task itself is not lost.
            log.exception(
                "attempt write dropped",
                extra={
                    "action": "write_dropped",
                    "task_id": write.task_id,
                    "write": type(write).__name__,
                },
            )

    def _write(self, write: AttemptWrite) -> None:
        with self._lock:
            self._writes.append(write)
        self._wake.set()

    # slot threads

    def _slot_loop(self) -> None:
        while True:
            lease = self._inbox.get()
            if lease is None:
                return
            with self._lock:
                running = self._running[lease.task_id]
            try:
                finished = self._attempt(lease, running.control)
            except Exception as exc:
                log.exception(
                    "attempt failed inside the engine",
                    extra={"action": "attempt_engine_error", "task_id": lease.task_id},
                )
                finished = self._finished(
                    lease,
                    AttemptOutcome(
                        status="failed",
                        retryable=True,
                        error_kind="engine",
                        error=f"the engine failed while running the attempt: {exc!r}",
                    ),
                    self._known_manifest(lease),
                )
            self._write(finished)
            with self._lock:
                del self._running[lease.task_id]
                self._idle += 1
            running.control.close()

    def _attempt(self, lease: Lease, control: AttemptControl) -> AttemptFinished:
        task = lease.task
        if control.reason is not None:
            return self._finished(
                lease,
                AttemptOutcome(
                    status=control.reason,
                    error_kind=control.reason,
                    error=f"{control.reason} before its process started",
                ),
            )
        try:
            service, manifest = self._service(task.service, task.version)
        except ServiceChanged as exc:
            return self._finished(
                lease,
                AttemptOutcome(
                    status="failed",
                    retryable=False,
                    error_kind="service_changed",
                    error=exc.message,
                ),
            )
        spec = self._spec(lease, service.path, manifest)
        record = None
        if self.recorder is not None:
            record = self.recorder.begin(lease, service, manifest, self.owner)
            spec = _with_hooks(spec, record)

        def started(pid: int, at: float) -> None:
            self._write(
                AttemptStarted(task.id, lease.epoch, lease.attempt, self.owner, pid, at)
            )

        def events(batch, progress) -> None:  # type: ignore[no-untyped-def]
            self._write(
                AttemptEvents(task.id, lease.epoch, lease.attempt, batch, progress)
            )

        outcome = self.runner.run(spec, control, started, events)
        log.info(
            "attempt ended",
            extra={
                "action": "attempt_ended",
                "task_id": task.id,
                "attempt": lease.attempt,
                "service": task.service,
                "tenant": task.tenant,
                "status": outcome.status,
                "exit_code": outcome.exit_code,
                "cpu_seconds": outcome.cpu_seconds,
            },
        )
        finished = self._finished(lease, outcome, manifest)
        return finished if record is None else record.seal(finished)

    def _service(self, name: str, version: str) -> tuple[ServiceRecord, Manifest]:
        return self.registry.resolve(f"{name}@{version}")

    def _spec(self, lease: Lease, service_path: str, manifest: Manifest) -> AttemptSpec:
        execution = self.config.execution
        security = self.config.security
        task = lease.task
        env = {k: os.environ[k] for k in security.env_allowlist if k in os.environ}
        return AttemptSpec(
            task_id=task.id,
            attempt=lease.attempt,
            service_dir=Path(service_path),
            entrypoint=manifest.entrypoint,
            input_text=task.input,
            timeout=task.timeout,
            limits=manifest.limits,
            workdir=self.workdir_root / f"{task.id}-{lease.attempt}",
            env=env,
            isolate=security.task_isolation,
            kill_grace=execution.kill_grace,
            output_cap=execution.output_cap_bytes,
            event_cap=execution.event_cap,
            result_cap=execution.result_cap_bytes,
            event_bytes_cap=execution.event_bytes_cap,
            keep_workdir=execution.keep_workdirs,
            runner=task.runner or manifest.runner or execution.default_runner,
            secrets=tuple(task.secret_names()),
        )

    def _known_manifest(self, lease: Lease) -> Manifest | None:
        """The task's manifest if it still resolves, for an attempt that
        failed inside the engine; None falls back to the config's backoff."""
        try:
            return self._service(lease.task.service, lease.task.version)[1]
        except Exception:
            return None

    def _retry_policy(self, manifest: Manifest | None) -> RetryPolicy:
        """The manifest's backoff keys where it sets them, else ``[queue]``'s."""
        if manifest is None or (
            manifest.retry_backoff is None
            and manifest.retry_base is None
            and manifest.retry_cap is None
        ):
            return self.retry
        return RetryPolicy(
            manifest.retry_backoff or self.retry.backoff,
            self.retry.base if manifest.retry_base is None else manifest.retry_base,
            self.retry.cap if manifest.retry_cap is None else manifest.retry_cap,
        )

    def _finished(
        self,
        lease: Lease,
        outcome: AttemptOutcome,
        manifest: Manifest | None = None,
    ) -> AttemptFinished:
        now = time.time()
        state, not_before = next_state(
            outcome.status,
            outcome.retryable,
            lease.attempt,
            lease.task.max_attempts,
            self._retry_policy(manifest),
            now,
            self.rng,
        )
        error = outcome.error
        if state == TaskState.DEAD:
            error = f"{error} (all {lease.task.max_attempts} attempts used)"
        return AttemptFinished(
            task_id=lease.task_id,
            epoch=lease.epoch,
            attempt=lease.attempt,
            at=now,
            outcome=outcome.status,
            next_state=state,
            not_before=not_before,
            result=outcome.result,
            error=error,
            error_kind=outcome.error_kind,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            cpu_seconds=outcome.cpu_seconds,
            peak_rss_kb=outcome.peak_rss_kb,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            stdout_bytes=outcome.stdout_bytes,
            stderr_bytes=outcome.stderr_bytes,
            events_dropped=outcome.events_dropped,
            extra=outcome.extra,
        )


def _with_hooks(spec: AttemptSpec, record: AttemptRecord) -> AttemptSpec:
    prepare, collect = record.prepare_hook, record.collect_hook
    if prepare is None and collect is None:
        return spec
    return dataclasses.replace(spec, prepare=prepare, collect=collect)
