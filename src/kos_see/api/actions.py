"""What the REST and gRPC interfaces do, once they know who asks.

Both interfaces authenticate through the dispatcher and then call these
methods with the Caller; the dispatcher's methods are where the policy gate
and the audit log sit, so nothing here decides what a caller may do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kos_see.api.feed import EventFeed
from kos_see.api.tokens import IssuedToken, TokenIssuer
from kos_see.callbacks.store import CallbackStore, check_url, new_secret
from kos_see.config import EngineConfig
from kos_see.dispatcher import (
    Dispatcher,
    SubmitRequest,
    Submitted,
    request_from_fields,
)
from kos_see.errors import (
    RequestRefused,
    TaskNotFound,
)
from kos_see.models import ServiceRecord, TaskRecord
from kos_see.security.principals import ANY_TENANT
from kos_see.security.verify import Caller
from kos_see.states import TaskState
from kos_see.store import Store, TaskFilter
from kos_see.store.schedule_store import ScheduleRecord, ScheduleStore

SUBMIT_FIELDS = {
    "service",
    "input",
    "tenant",
    "priority",
    "queue_class",
    "not_before",
    "idempotency_key",
    "callback",
}
MIN_SECRET = 16


@dataclass(frozen=True)
class Page:
    items: list[TaskRecord]
    next_offset: int | None


@dataclass(frozen=True)
class SubmitOutcome:
    submitted: Submitted
    callback_secret: str | None  # given only when the engine made it


class ApiActions:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        config: EngineConfig,
        issuer: TokenIssuer,
        feed: EventFeed,
        on_callback: Any = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.config = config
        self.issuer = issuer
        self.feed = feed
        self.callbacks = CallbackStore(store)
        # Called when a subscription is made for a task that has ended already.
        self.on_callback = on_callback or (lambda: None)

    def token(self, caller: Caller, fields: dict[str, Any]) -> IssuedToken:
        ttl = fields.get("ttl", self.config.api.token_ttl)
        limit = self.config.api.token_max_ttl
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not math.isfinite(ttl)
            or not 1 <= ttl <= limit
        ):
            raise RequestRefused(
                f"token ttl {ttl!r} must be a number of seconds from 1 to {limit:g} "
                "(api.token_max_ttl)",
                field="ttl",
            )
        return self.issuer.issue(caller, float(ttl))

    def submit(self, caller: Caller, fields: dict[str, Any]) -> SubmitOutcome:
        request, callback = submit_request(fields)
        url, secret, made = None, None, False
        if callback is not None:
            url, secret, made = self._callback(callback)
        host = urlsplit(url).hostname if url is not None else None
        submitted = self.dispatcher.submit(
            request, caller=caller, callback_host=host.lower() if host else None
        )
        self.feed.poke()
        if url is not None and secret is not None:
            sub = self.callbacks.subscribe(submitted.task.id, url, secret)
            made = made and sub.secret == secret
            if submitted.task.terminal:
                self.on_callback()
        return SubmitOutcome(submitted, secret if made else None)

    def _callback(self, callback: Any) -> tuple[str, str, bool]:
        if not isinstance(callback, dict) or set(callback) - {"url", "secret"}:
            raise RequestRefused(
                "callback must be an object {url, secret?}", field="callback"
            )
        url = check_url(callback.get("url"), self.config.callbacks)
        secret = callback.get("secret")
        if secret is None:
            return url, new_secret(), True
        if not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= 128:
            raise RequestRefused(
                f"callback secret must be {MIN_SECRET} to 128 characters",
                field="callback.secret",
            )
        return url, secret, False

    def get(self, caller: Caller, task_id: str) -> TaskRecord:
        return self.dispatcher.get(task_id, caller=caller)

    def callback(self, caller: Caller, task_id: str) -> dict[str, Any]:
        """A task's webhook and every delivery attempt (its secret never)."""
        self.get(caller, task_id)
        sub = self.callbacks.get(task_id)
        if sub is None:
            raise TaskNotFound(f"task {task_id!r} has no callback", task_id=task_id)
        return {
            "task_id": sub.task_id,
            "url": sub.url,
            "state": sub.state,
            "attempts": sub.attempts,
            "next_at": sub.next_at,
            "deliveries": [d.to_dict() for d in self.callbacks.deliveries(task_id)],
        }

    def cancel(self, caller: Caller, task_id: str) -> TaskRecord:
        task = self.dispatcher.cancel(task_id, caller=caller)
        self.feed.poke()  # a queued task ends here, with no flush to tell streams
        return task

    def retry(self, caller: Caller, task_id: str) -> TaskRecord:
        task = self.dispatcher.retry(task_id, caller=caller)
        self.feed.poke()
        return task

    def list(
        self,
        caller: Caller,
        state: str | None,
        service: str | None,
        tenant: str | None,
        limit: int,
        offset: int,
    ) -> Page:
        # The dispatcher scopes the list to the caller's tenant and to the
        # services the policy lets it read, and audits the request. Known
        # shortcoming: the page is cut before the per-service read filter, so
        # a caller who may not read some services can get a short page.
        found = self.dispatcher.list_tasks(
            TaskFilter(
                state=TaskState(state) if state else None,
                service=service,
                tenant=tenant,
                limit=limit + 1,  # one more tells whether a next page exists
                offset=offset,
            ),
            caller=caller,
        )
        more = len(found) > limit
        return Page(found[:limit], offset + limit if more else None)

    def services(self, caller: Caller) -> list[ServiceRecord]:
        return self.dispatcher.registry.list()

    def schedules(self, caller: Caller) -> list[ScheduleRecord]:
        found = ScheduleStore(self.store).list()
        if caller.tenant == ANY_TENANT:
            return found
        return [s for s in found if s.tenant == caller.tenant]

    def audit_verify(self, caller: Caller) -> dict[str, Any]:
        return self.dispatcher.verify_audit(caller).to_dict()

    def ready(self) -> None:
        """Raises StoreUnavailable (or StoreError) if the store cannot answer."""
        self.store.state_counts()


def submit_request(fields: dict[str, Any]) -> tuple[SubmitRequest, Any]:
    """A SubmitRequest from an envelope's fields, and its callback (or None)."""
    unknown = sorted(set(fields) - SUBMIT_FIELDS)
    if unknown:
        raise RequestRefused(
            f"unknown submit field(s) {', '.join(unknown)}; a submit has "
            f"{', '.join(sorted(SUBMIT_FIELDS))}",
            field=unknown[0],
        )
    service = fields.get("service")
    if not isinstance(service, str) or not service:
        raise RequestRefused(
            "submit needs a service (NAME or NAME@VERSION)", field="service"
        )
    _typed(fields, "tenant", str)
    _typed(fields, "priority", int)
    _typed(fields, "queue_class", str)
    _typed(fields, "not_before", int | float)
    _typed(fields, "idempotency_key", str)
    # The dispatcher checks the request against the signed fields, so it is
    # built from them exactly as every other interface builds it.
    signed = {k: v for k, v in fields.items() if k != "callback"}
    request = request_from_fields(signed)
    return request, fields.get("callback")


def _typed(fields: dict[str, Any], name: str, kind: Any) -> None:
    value = fields.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestRefused(
            f"submit field {name!r} has the wrong type ({type(value).__name__})",
            field=name,
        )
