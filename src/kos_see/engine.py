"""An engine on one home: the parts of the lifecycle wired together.

``Engine.open(home)`` gives the store, the registry and the dispatcher, which
is all a submitting client needs. ``serve()`` adds the worker pool and the
wake-up listener; only one process serves a home at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kos_see.audit.log import AuditLog
from kos_see.config import EngineConfig
from kos_see.dispatcher import Dispatcher
from kos_see.errors import EngineAlreadyServing, StoreUnavailable, TaskNotFound
from kos_see.events import wakeup
from kos_see.events.pg_wakeup import PgWakeListener
from kos_see.home import Home
from kos_see.models import AttemptFinished, AttemptWrite, TaskRecord
from kos_see.policy.gate import PolicyGate
from kos_see.registry import Registry
from kos_see.runners.base import Runner
from kos_see.runners.cgroups import Cgroups
from kos_see.runners.launch import make_launcher
from kos_see.runners.local import LocalPythonRunner
from kos_see.runners.router import RunnerSet
from kos_see.runners.sandbox import SandboxRunner
from kos_see.security.canonical import sha256_digest
from kos_see.security.keys import load_or_create
from kos_see.serving_lock import ServingLock, database_file
from kos_see.states import TERMINAL
from kos_see.store import Store, open_store
from kos_see.worker import WorkerPool

if TYPE_CHECKING:
    from kos_see.events.streams import EventRelay
    from kos_see.queue.scheduler import Scheduler

log = logging.getLogger(__name__)

POLL_START = 0.02
POLL_MAX = 0.25


class Engine:
    def __init__(self, home: Home, config: EngineConfig, store: Store) -> None:
        self.home = home
        self.config = config
        self.store = store
        self.registry = Registry(store)
        self.gate = PolicyGate(home.policy_path(config))
        self.audit = AuditLog(
            store,
            lambda: load_or_create(home.engine_key_path),
            retention=config.security.max_log_retention,
        )
        self.dispatcher = Dispatcher(
            store,
            self.registry,
            config,
            self._notify,
            gate=self.gate,
            audit=self.audit,
        )
        self.pool: WorkerPool | None = None
        self._serving_lock: ServingLock | None = None
        self._listener: wakeup.WakeListener | PgWakeListener | None = None
        self.scheduler: Scheduler | None = None  # cron schedules, while serving
        self.relay: EventRelay | None = None  # events to Redis, while serving
        self._finished = threading.Condition()
        self._generation = 0
        self._recently_ended: deque[tuple[int, set[str]]] = deque(maxlen=256)
        # Whether the last notify reached a serving engine (for the CLI's message).
        self.last_notify_delivered = False
        # Told after each flush of task writes, with whether a task ended: the
        # API's streams, webhooks and metrics hang off this one call site.
        self._task_listeners: list[Callable[[bool], None]] = []

    @classmethod
    def open(cls, home: Home, config: EngineConfig | None = None) -> Engine:
        home.require()
        config = config or home.load_config()
        store = open_store(home.store_url(config))
        return cls(home, config, store)

    def close(self) -> None:
        if self.pool is not None or self._listener is not None:
            self.stop()
        self.audit.close()
        self.store.close()

    # serving

    @property
    def shared_store(self) -> bool:
        """True when engines on other hosts may serve the same store
        (PostgreSQL): then any number serve at once, waking each other through
        the database, and none may treat another's leases as left behind."""
        return self.store_kind == "postgresql"

    @property
    def store_kind(self) -> str:
        engine = getattr(self.store, "engine", None)
        return "sqlite" if engine is None else engine.dialect.name

    def serve(
        self, runner: Runner | None = None, worker: bool = True, scheduler: bool = True
    ) -> None:
        """Start the worker pool (``worker``) and the cron scheduler
        (``scheduler``) in this process; returns at once."""
        self._lock_store()
        try:
            self._start_serving(runner, worker, scheduler)
        except BaseException:
            self._unlock_store()
            raise

    def _lock_store(self) -> None:
        database = database_file(self.home.store_url(self.config))
        if database is None:
            return
        lock = ServingLock(database)
        lock.acquire(self.home.root)
        self._serving_lock = lock

    def _unlock_store(self) -> None:
        if self._serving_lock is not None:
            self._serving_lock.release()
            self._serving_lock = None

    def _start_serving(
        self, runner: Runner | None, worker: bool, scheduler: bool
    ) -> None:
        listener = self._wake_listener()
        self._start_relay()
        if not worker:
            self._listener = listener
            listener.start()
            if scheduler:
                self._start_scheduler()
            return
        # Imported here: only a serving engine fetches dependencies.
        from kos_see.provenance.wiring import make_recorder

        self.pool = WorkerPool(
            self.store,
            self.registry,
            self.config,
            runner or self._runners(),
            self.home.workdir_root(self.config),
            exclusive=not self.shared_store,
            recorder=make_recorder(self.home, self.config),
        )
        self.pool.add_flush_listener(self._on_flush)
        self.pool.add_flush_listener(self._audit_attempts)
        if self.relay is not None:
            self.pool.add_flush_listener(self.relay.wake)
        self.audit.start()
        try:
            self.pool.start()
        except BaseException:
            listener.close()
            self.pool = None
            raise
        self._listener = listener
        listener.start()
        if scheduler:
            self._start_scheduler()
        _warn_if_root()

    def _wake_listener(self) -> wakeup.WakeListener | PgWakeListener:
        if self.shared_store:
            return PgWakeListener(self.config.store.url, self._on_wake)
        try:
            return wakeup.WakeListener(self.home.root, self._on_wake)
        except OSError as exc:
            raise EngineAlreadyServing(
                f"another engine already serves {self.home.root}; stop it first "
                "(only one engine serves an embedded home)"
            ) from exc

    def _start_relay(self) -> None:
        """Copy stored events to Redis Streams while serving, if configured."""
        if not self.config.events.url:
            return
        from kos_see.events.streams import EventRelay

        self.relay = EventRelay(self.store, self.config.events)
        self.relay.start()

    def _runners(self) -> RunnerSet:
        """The local runner and the sandbox, sharing the host's cgroups and
        the home's secrets; the sandbox never mounts the home."""
        cgroups = Cgroups.detect()
        secrets_dir = self.home.secrets_dir
        local = LocalPythonRunner(
            make_launcher(self.config.execution.launcher),
            secrets_dir=secrets_dir,
            cgroups=cgroups,
        )
        sandbox = SandboxRunner([self.home.root], secrets_dir, cgroups)
        return RunnerSet({local.name: local, sandbox.name: sandbox})

    def stop(self, grace: float | None = None) -> None:
        self._stop_scheduler()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.pool is not None:
            self.pool.shutdown(grace)
            self.pool = None
        if self.relay is not None:
            self.relay.close()  # after the pool's last flush: it copies that too
            self.relay = None
        self._unlock_store()

    # cron schedules: a thread that makes their tasks through the dispatcher

    def _start_scheduler(self) -> None:
        from kos_see.queue.scheduler import Scheduler  # only a serving engine

        self.scheduler = Scheduler.for_engine(self)
        self.scheduler.start()

    def _stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None

    def _on_wake(self, message: str) -> None:
        if self.pool is not None:
            self.pool.wake(message)

    def _notify(self, reason: str) -> None:
        if self.shared_store:
            # Every serving engine on every host hears it, this one included.
            self.last_notify_delivered = self._notify_shared(reason)
            return
        if self.pool is not None:
            self.pool.wake(reason)
            self.last_notify_delivered = True
        else:
            self.last_notify_delivered = wakeup.send(self.home.root, reason)

    def add_task_listener(self, listener: Callable[[bool], None]) -> None:
        self._task_listeners.append(listener)

    def remove_task_listener(self, listener: Callable[[bool], None]) -> None:
        if listener in self._task_listeners:
            self._task_listeners.remove(listener)

    def _notify_shared(self, reason: str) -> bool:
        if self.pool is not None:
            self.pool.wake(reason)
        try:
            self.store.notify(reason)  # type: ignore[attr-defined]
        except StoreUnavailable:
            # The task is stored; workers find it at their next look.
            log.warning("wake-up not sent", extra={"action": "wake_not_sent"})
            return False
        return True

    def _on_flush(self, batch: list[AttemptWrite]) -> None:
        ended = {
            w.task_id
            for w in batch
            if isinstance(w, AttemptFinished) and w.next_state in TERMINAL
        }
        for listener in list(self._task_listeners):
            listener(bool(ended))
        if ended:
            with self._finished:
                self._generation += 1
                self._recently_ended.append((self._generation, ended))
                self._finished.notify_all()

    def _audit_attempts(self, batch: list[AttemptWrite]) -> None:
        # One entry per attempt's end: how it ended, the task's next state
        # and a digest of its result, linking the request to what came out.
        for write in batch:
            if not isinstance(write, AttemptFinished):
                continue
            self.audit.record(
                "attempt_end",
                {
                    "attempt": write.attempt,
                    "outcome": write.outcome,
                    "state": write.next_state.value,
                    "result_digest": None
                    if write.result is None
                    else sha256_digest(write.result.encode()),
                    "error_kind": write.error_kind,
                    "exit_code": write.exit_code,
                    "signal": write.signal,
                    "killed_by": write.extra.get("killed_by"),
                    # Links the signed provenance statement into the chain.
                    "provenance_digest": _statement_digest(write),
                },
                task_id=write.task_id,
                principal="engine",
                at=write.at,
            )

    # waiting

    def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """Block until the task is in a terminal state (or ``timeout`` passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.pool is not None and not self.shared_store:
            # Only this process runs the home's tasks: its flushes say when.
            return self._wait_serving(task_id, deadline)
        pause = POLL_START
        while True:
            task = self._read_task(task_id)
            if task.terminal or _past(deadline):
                return task
            # Another process serves: read the store again shortly.
            time.sleep(_left(deadline, pause))
            pause = min(POLL_MAX, pause * 1.5)

    def _wait_serving(self, task_id: str, deadline: float | None) -> TaskRecord:
        # In the serving process each flush says which tasks ended, so the
        # store is read again only when this task is among them (or when this
        # waiter fell so far behind that it cannot tell).
        with self._finished:
            seen = self._generation
        task = self._read_task(task_id)
        while not task.terminal and not _past(deadline):
            with self._finished:
                self._finished.wait(_left(deadline, POLL_MAX))
                news = [ids for gen, ids in self._recently_ended if gen > seen]
                missed = (
                    bool(self._recently_ended) and self._recently_ended[0][0] > seen + 1
                )
                seen = self._generation
            if missed or any(task_id in ids for ids in news):
                task = self._read_task(task_id)
        return task

    def _read_task(self, task_id: str) -> TaskRecord:
        task = self.store.get_task(task_id)
        if task is None:
            raise TaskNotFound(f"no task {task_id!r}", task_id=task_id)
        return task


def _warn_if_root() -> None:
    # RLIMIT_NPROC counts every process of the user and is not enforced for
    # uid 0 at all, so a manifest's limits.processes bounds nothing here.
    if os.geteuid() == 0:
        log.warning(
            "serving as root: limits.processes has no effect",
            extra={"action": "process_limit_ineffective", "uid": 0},
        )


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _left(deadline: float | None, cap: float) -> float:
    if deadline is None:
        return cap
    return max(0.0, min(cap, deadline - time.monotonic()))


def _statement_digest(write: AttemptFinished) -> str | None:
    """The attempt's provenance statement digest; None when none was signed."""
    record = write.provenance
    if record is None or not record.statement_digest:
        return None
    return record.statement_digest
