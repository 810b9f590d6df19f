"""The webhook sender: delivers each ended task's payload to its callback URL.

It works from the store, not from a queue in memory: a subscription stays
pending until a delivery is answered 2xx, so a receiver that is down, or a
sender that stops, loses nothing; the next sender (in this or another
process) picks it up. Each attempt is recorded, answered or not, and retries
back off exponentially up to ``callbacks.retry_cap``. After
``callbacks.max_attempts`` the subscription is marked failed, logged at
ERROR and kept. Delivery is at least once: a receiver deduplicates by the
``X-Kos-See-Delivery`` header (the task id).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx

from kos_see.callbacks.signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_payload,
)
from kos_see.callbacks.store import CallbackStore, Subscription
from kos_see.config import CallbacksConfig
from kos_see.store import Store

log = logging.getLogger(__name__)


def payload(store: Store, task_id: str) -> dict[str, Any]:
    task = store.get_task(task_id)
    if task is None:
        return {"task_id": task_id, "state": "unknown"}
    return {
        "task_id": task.id,
        "state": task.state.value,
        "service": task.service,
        "version": task.version,
        "tenant": task.tenant,
        "attempts": task.attempts,
        "finished_at": task.finished_at,
        "result": task.result_value(),
        "error": task.error,
        "error_kind": task.error_kind,
    }


class CallbackSender:
    def __init__(self, store: Store, config: CallbacksConfig) -> None:
        self.store = store
        self.config = config
        self.subscriptions = CallbackStore(store)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=config.timeout, follow_redirects=False)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="kos-see-callbacks", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout + 5)
            self._thread = None
        self._client.close()

    def wake(self) -> None:
        """A task may have ended: look for due deliveries now."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # the sender must outlive a bad pass
                log.exception(
                    "callback pass failed", extra={"action": "callback_pass_failed"}
                )
            self._wake.wait(self.config.poll)
            self._wake.clear()

    def deliver_due(self, now: float | None = None) -> int:
        """Try every due delivery once; returns how many were tried."""
        now = time.time() if now is None else now
        tried = 0
        for sub in self.subscriptions.due(now):
            if self._stop.is_set():
                break
            # While one attempt runs, no other sender takes the subscription.
            if self.subscriptions.claim(sub, now + 2 * self.config.timeout + 5):
                self._attempt(sub)
                tried += 1
        return tried

    def _attempt(self, sub: Subscription) -> None:
        attempt = sub.attempts + 1
        body = json.dumps(
            {**payload(self.store, sub.task_id), "delivery_attempt": attempt},
            separators=(",", ":"),
        ).encode()
        status, error, started = None, None, time.time()
        try:
            status = self._post(sub, body)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        ended = time.time()
        delivered = status is not None and 200 <= status < 300
        if not delivered and error is None:
            error = f"receiver answered HTTP {status}"
        state, next_at = self._next(delivered, attempt, ended)
        self.subscriptions.record(
            sub, attempt, started, status, error, ended - started, state, next_at
        )
        self._log(sub, attempt, status, error, state)

    def _post(self, sub: Subscription, body: bytes) -> int:
        stamp = int(time.time())
        response = self._client.post(
            sub.url,
            content=body,
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(stamp),
                SIGNATURE_HEADER: sign_payload(sub.secret, stamp, body),
                DELIVERY_HEADER: sub.task_id,
            },
        )
        return response.status_code

    def _next(self, delivered: bool, attempt: int, now: float) -> tuple[str, float]:
        if delivered:
            return "delivered", now
        if attempt >= self.config.max_attempts:
            return "failed", now
        delay = min(self.config.retry_cap, self.config.retry_base * 2 ** (attempt - 1))
        return "pending", now + delay

    def _log(
        self,
        sub: Subscription,
        attempt: int,
        status: int | None,
        error: str | None,
        state: str,
    ) -> None:
        fields = {
            "action": "callback_delivery",
            "task_id": sub.task_id,
            "attempt": attempt,
            "status": status,
            "error": error,
            "callback_state": state,
        }
        if state == "failed":
            log.error("callback given up", extra=fields)
        elif state == "pending":
            log.warning("callback delivery failed; will retry", extra=fields)
        else:
            log.info("callback delivered", extra=fields)
