"""An engine on one home: the parts of the lifecycle wired together.

``Engine.open(home)`` gives the store, the registry and the dispatcher, which
is all a submitting client needs. ``serve()`` adds the worker pool and the
wake-up listener; only one process serves a home at a time.
"""

from __future__ import annotations

import logging
import threading
import time

from kos_see.config import EngineConfig
from kos_see.dispatcher import Dispatcher
from kos_see.errors import HomeError, TaskNotFound
from kos_see.events import wakeup
from kos_see.home import Home
from kos_see.models import AttemptFinished, AttemptWrite, TaskRecord
from kos_see.registry import Registry
from kos_see.runners.base import Runner
from kos_see.runners.launch import make_launcher
from kos_see.runners.local import LocalPythonRunner
from kos_see.store import Store, open_store
from kos_see.worker import WorkerPool

log = logging.getLogger(__name__)

POLL_START = 0.02
POLL_MAX = 0.25


class Engine:
    def __init__(self, home: Home, config: EngineConfig, store: Store) -> None:
        self.home = home
        self.config = config
        self.store = store
        self.registry = Registry(store)
        self.dispatcher = Dispatcher(store, self.registry, config, self._notify)
        self.pool: WorkerPool | None = None
        self._listener: wakeup.WakeListener | None = None
        self._finished = threading.Condition()
        # Whether the last notify reached a serving engine (for the CLI's message).
        self.last_notify_delivered = False

    @classmethod
    def open(cls, home: Home, config: EngineConfig | None = None) -> Engine:
        home.require()
        config = config or home.load_config()
        store = open_store(home.store_url(config))
        return cls(home, config, store)

    def close(self) -> None:
        if self.pool is not None:
            self.stop()
        self.store.close()

    # serving

    def serve(self, runner: Runner | None = None) -> None:
        """Start the worker pool in this process (returns at once)."""
        try:
            listener = wakeup.WakeListener(self.home.root, self._on_wake)
        except OSError as exc:
            raise HomeError(
                f"another engine already serves {self.home.root}; stop it first "
                "(only one engine serves an embedded home)"
            ) from exc
        self.pool = WorkerPool(
            self.store,
            self.registry,
            self.config,
            runner or LocalPythonRunner(make_launcher(self.config.execution.launcher)),
            self.home.workdir_root(self.config),
            exclusive=True,
        )
        self.pool.add_flush_listener(self._on_flush)
        self.pool.start()
        self._listener = listener
        listener.start()

    def stop(self, grace: float | None = None) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.pool is not None:
            self.pool.shutdown(grace)
            self.pool = None

    def _on_wake(self, message: str) -> None:
        if self.pool is not None:
            self.pool.wake(message)

    def _notify(self, reason: str) -> None:
        if self.pool is not None:
            self.pool.wake(reason)
            self.last_notify_delivered = True
        else:
            self.last_notify_delivered = wakeup.send(self.home.root, reason)

    def _on_flush(self, batch: list[AttemptWrite]) -> None:
        if any(isinstance(w, AttemptFinished) for w in batch):
            with self._finished:
                self._finished.notify_all()

    # waiting

    def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """Block until the task is in a terminal state (or ``timeout`` passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_START
        while True:
            task = self.store.get_task(task_id)
            if task is None:
                raise TaskNotFound(f"no task {task_id!r}", task_id=task_id)
            if task.terminal:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                return task
            left = POLL_MAX if deadline is None else deadline - time.monotonic()
            wait = max(0.0, min(pause, left))
            if self.pool is not None:
                # In the serving process a finished attempt wakes us at once.
                with self._finished:
                    self._finished.wait(wait)
            else:
                # Another process serves: read the store again shortly.
                time.sleep(wait)
                pause = min(POLL_MAX, pause * 1.5)
