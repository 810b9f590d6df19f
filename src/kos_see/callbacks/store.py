"""Callback subscriptions and their delivery attempts, in the engine's store."""

from __future__ import annotations

import fnmatch
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from kos_see.config import CallbacksConfig
from kos_see.errors import CallbackRefused, StoreError
from kos_see.states import TERMINAL
from kos_see.store.schema import callback_deliveries, callbacks, tasks

MAX_URL = 2000


@dataclass(frozen=True)
class Subscription:
    task_id: str
    url: str
    secret: str
    state: str  # pending, delivered, failed
    attempts: int
    next_at: float
    created_at: float


@dataclass(frozen=True)
class Delivery:
    id: int
    task_id: str
    attempt: int
    at: float
    status: int | None
    error: str | None
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_url(url: object, config: CallbacksConfig) -> str:
    """The URL if this engine may call it; CallbackRefused naming why not."""
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
        raise CallbackRefused(
            f"callback URL must be text of 1 to {MAX_URL} characters",
            field="callback.url",
        )
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise CallbackRefused(
            f"callback URL {url!r} is not an http(s) URL with a host",
            field="callback.url",
        )
    if parts.scheme == "http" and host not in config.insecure_hosts:
        raise CallbackRefused(
            f"callback URL {url!r} must use https; plain http is allowed only for "
            f"{', '.join(config.insecure_hosts) or 'no host'} (callbacks."
            "insecure_hosts)",
            field="callback.url",
        )
    if not any(fnmatch.fnmatchcase(host, p.lower()) for p in config.allowed_hosts):
        raise CallbackRefused(
            f"callback host {host!r} is not allowed; allowed: "
            f"{', '.join(config.allowed_hosts) or 'none'} (callbacks.allowed_hosts)",
            field="callback.url",
        )
    return url


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class CallbackStore:
    """Subscriptions and deliveries on the SQL store's connections."""

    def __init__(self, store: Any) -> None:
        if not all(hasattr(store, a) for a in ("_write", "_read")):
            raise StoreError(
                f"callbacks need the SQL store; {type(store).__name__} has none"
            )
        self.store = store

    def subscribe(
        self, task_id: str, url: str, secret: str, now: float | None = None
    ) -> Subscription:
        now = time.time() if now is None else now
        record = Subscription(task_id, url, secret, "pending", 0, now, now)
        with self.store._write() as conn:
            existing = conn.execute(
                sa.select(callbacks).where(callbacks.c.task_id == task_id)
            ).first()
            if existing is not None:
                # An idempotent resubmit keeps the first subscription.
                return Subscription(**existing._mapping)
            conn.execute(callbacks.insert().values(**asdict(record)))
        return record

    def get(self, task_id: str) -> Subscription | None:
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(callbacks).where(callbacks.c.task_id == task_id)
            ).first()
        return None if row is None else Subscription(**row._mapping)

    def due(self, now: float, limit: int = 50) -> list[Subscription]:
        """Pending subscriptions whose task has ended and whose time has come."""
        query = (
            sa.select(callbacks)
            .join(tasks, tasks.c.id == callbacks.c.task_id)
            .where(
                callbacks.c.state == "pending",
                callbacks.c.next_at <= now,
                tasks.c.state.in_([s.value for s in TERMINAL]),
            )
            .order_by(callbacks.c.next_at)
            .limit(limit)
        )
        with self.store._read() as conn:
            return [Subscription(**row._mapping) for row in conn.execute(query)]

    def claim(self, sub: Subscription, until: float) -> bool:
        """Take a due subscription for one attempt; False if another sender
        took it first (its next_at moved)."""
        with self.store._write() as conn:
            result = conn.execute(
                callbacks.update()
                .where(
                    callbacks.c.task_id == sub.task_id,
                    callbacks.c.state == "pending",
                    callbacks.c.next_at == sub.next_at,
                )
                .values(next_at=until)
            )
            return result.rowcount == 1

    def record(
        self,
        sub: Subscription,
        attempt: int,
        at: float,
        status: int | None,
        error: str | None,
        duration: float,
        next_state: str,
        next_at: float,
    ) -> None:
        """One delivery attempt and what follows it, in one transaction."""
        with self.store._write() as conn:
            conn.execute(
                callback_deliveries.insert().values(
                    task_id=sub.task_id,
                    attempt=attempt,
                    at=at,
                    status=status,
                    error=error,
                    duration=duration,
                )
            )
            conn.execute(
                callbacks.update()
                .where(callbacks.c.task_id == sub.task_id)
                .values(state=next_state, attempts=attempt, next_at=next_at)
            )

    def deliveries(self, task_id: str) -> list[Delivery]:
        query = (
            sa.select(callback_deliveries)
            .where(callback_deliveries.c.task_id == task_id)
            .order_by(callback_deliveries.c.id)
        )
        with self.store._read() as conn:
            return [Delivery(**row._mapping) for row in conn.execute(query)]
