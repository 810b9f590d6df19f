"""Intake: every interface submits, cancels and retries through here.

The dispatcher resolves the service, validates the input against its schema
(reporting every violation with its JSON path), applies defaults from the
manifest and the configuration, honours idempotency keys and enqueues. It
then wakes whoever serves the queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import jsonschema
import referencing.exceptions

from kos_see.config import EngineConfig
from kos_see.errors import (
    IdempotencyConflict,
    InputInvalid,
    RequestRefused,
    TaskNotFound,
)
from kos_see.models import NewTask, ServiceRecord, TaskRecord, new_task_id
from kos_see.registry import Registry
from kos_see.registry.schema import validator_for
from kos_see.security.envelope import Envelope, parse_envelope
from kos_see.security.principals import PrincipalStore
from kos_see.security.verify import Caller, RequestVerifier
from kos_see.store import Store

log = logging.getLogger(__name__)

QUEUE_CLASSES = ("realtime", "batch", "deferred", "scheduled")
RUN_CLASSES = ("realtime", "batch")
MAX_INPUT_BYTES = 1024 * 1024
# Tenants and principals are names in logs, quotas and config keys.
IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MAX_IDEMPOTENCY_KEY = 200
# A not-before time further ahead than this is a mistake, not a plan.
MAX_NOT_BEFORE_AHEAD = 10 * 365.25 * 86400

Notifier = Callable[[str], None]


@dataclass(frozen=True)
class SubmitRequest:
    service: str  # NAME or NAME@VERSION
    input: Any
    tenant: str = "default"
    principal: str = "local"
    priority: int | None = None
    queue_class: str | None = None
    not_before: float | None = None
    idempotency_key: str | None = None
    schedule: str | None = None  # set by the scheduler for the tasks it makes


@dataclass(frozen=True)
class Submitted:
    task: TaskRecord
    created: bool  # False: an earlier task with the same idempotency key


def canonical_json(value: Any) -> str:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def digest_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def check_identity(tenant: object, principal: object) -> None:
    """Refuse a tenant or principal that is not a plain name."""
    for field, value in (("tenant", tenant), ("principal", principal)):
        if not isinstance(value, str) or not IDENTITY.fullmatch(value):
            raise RequestRefused(
                f"{field} {value!r} is not a valid name: 1 to 64 letters, digits "
                "and _ . @ -, starting with a letter or digit",
                field=field,
            )


def check_idempotency_key(key: object) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        shown = f"of {len(key)} characters" if isinstance(key, str) else repr(key)
        raise RequestRefused(
            f"idempotency key {shown} is not valid: give 1 to "
            f"{MAX_IDEMPOTENCY_KEY} characters",
            field="idempotency_key",
        )


class Dispatcher:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        config: EngineConfig,
        notify: Notifier | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.notify = notify or (lambda _reason: None)
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self._request_verifier: RequestVerifier | None = None

    def authenticate(self, envelope: Envelope | dict[str, Any]) -> Caller:
        """Who sent a request: checks the envelope's shape, its signature, its
        timestamp against the allowed skew and its nonce against the replay
        window. Every interface calls this first and hands the Caller to the
        action it asks for; a method called with caller=None is the engine's
        own trusted call (the scheduler, tests)."""
        if self._request_verifier is None:
            self._request_verifier = RequestVerifier(
                PrincipalStore(self.store), self.config.security
            )
        return self._request_verifier.verify(parse_envelope(envelope))

    def check(
        self, service: str, value: Any, priority: int | None = None
    ) -> tuple[ServiceRecord, str]:
        """What a submit would check of a request before enqueuing it: the
        service resolves, the input matches its schema, the priority is in
        range. Returns the service and the input as canonical JSON."""
        record, manifest = self.registry.resolve(service)
        input_text = self._check_input(value, manifest.input_schema, record.ref)
        self._priority(priority)
        return record, input_text

    def submit(
        self,
        request: SubmitRequest,
        now: float | None = None,
        caller: Caller | None = None,
    ) -> Submitted:
        now = time.time() if now is None else now
        if caller is not None:
            request = replace(
                request,
                tenant=caller.acts_for(request.tenant),
                principal=caller.principal,
            )
        check_identity(request.tenant, request.principal)
        check_idempotency_key(request.idempotency_key)
        record, manifest = self.registry.resolve(request.service)
        input_text = self._check_input(request.input, manifest.input_schema, record.ref)
        queue_class, run_class = self._classes(request, manifest.queue_class, now)
        priority = self._priority(request.priority)
        not_before = max(now, request.not_before or now)
        new = NewTask(
            id=new_task_id(),
            service=record.name,
            version=record.version,
            digest=record.digest,
            tenant=request.tenant,
            principal=request.principal,
            queue_class=queue_class,
            lane="deferred" if not_before > now else run_class,
            run_class=run_class,
            priority=priority,
            rank_at=now - priority * self.config.queue.aging,
            schedule=request.schedule,
            input=input_text,
            input_digest=digest_text(input_text),
            idempotency_key=request.idempotency_key,
            not_before=not_before,
            timeout=manifest.timeout or self.config.execution.worker_timeout,
            max_attempts=1
            + (
                manifest.retry_limit
                if manifest.retry_limit is not None
                else self.config.queue.retry_limit
            ),
            created_at=now,
        )
        task, created = self.store.create_task(new)
        if not created:
            self._check_same_request(task, new)
        else:
            self.notify("submit")
        log.info(
            "task submitted" if created else "task found by idempotency key",
            extra={
                "action": "task_submitted",
                "task_id": task.id,
                "service": record.ref,
                "tenant": task.tenant,
                "new_task": created,
            },
        )
        return Submitted(task=task, created=created)

    def cancel(
        self, task_id: str, now: float | None = None, caller: Caller | None = None
    ) -> TaskRecord:
        task = self.store.cancel_task(task_id, time.time() if now is None else now)
        if task.cancel_requested:
            self.notify("cancel")
        log.info(
            "task cancel requested",
            extra={
                "action": "task_cancel",
                "task_id": task_id,
                "state": task.state.value,
            },
        )
        return task

    def retry(
        self, task_id: str, now: float | None = None, caller: Caller | None = None
    ) -> TaskRecord:
        """Requeue a dead task (an operator's retry) with a fresh attempt
        budget: 1 + its retry limit, as when it was submitted. Raises
        TaskNotFound, or RequestRefused if it is not dead."""
        task = self.get(task_id)
        try:
            _record, manifest = self.registry.resolve(f"{task.service}@{task.version}")
            retry_limit = manifest.retry_limit
        except RequestRefused:
            retry_limit = None  # the service changed: the store refuses or runs it
        if retry_limit is None:
            retry_limit = self.config.queue.retry_limit
        now = time.time() if now is None else now
        task = self.store.retry_task(task_id, now, 1 + retry_limit)
        # A requeued task wakes a serving engine as a submitted one does.
        self.notify("submit")
        log.info(
            "dead task requeued",
            extra={
                "action": "task_retry",
                "task_id": task_id,
                "max_attempts": task.max_attempts,
            },
        )
        return task

    def get(self, task_id: str, caller: Caller | None = None) -> TaskRecord:
        task = self.store.get_task(task_id)
        if task is None:
            raise TaskNotFound(f"no task {task_id!r}", task_id=task_id)
        return task

    def _check_input(self, value: Any, schema: dict[str, Any], ref: str) -> str:
        try:
            text = canonical_json(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InputInvalid(
                f"input for {ref} is not JSON-serialisable: {exc}",
                [{"path": "$", "message": str(exc)}],
            ) from exc
        if len(text.encode()) > MAX_INPUT_BYTES:
            raise InputInvalid(
                f"input for {ref} is larger than {MAX_INPUT_BYTES} bytes; pass large "
                "data as a file the service reads, not inline",
                [{"path": "$", "message": "too large"}],
            )
        validator = self._validator(ref, schema)
        try:
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        except RecursionError as exc:
            raise InputInvalid(
                f"input for {ref} is nested too deeply to check against its schema",
                [{"path": "$", "message": "nested too deeply"}],
            ) from exc
        except referencing.exceptions.Unresolvable as exc:
            # Only a version registered before references were checked.
            raise RequestRefused(
                f"the input schema of {ref} refers to {exc.ref!r}, which the "
                "engine does not fetch; register a version whose schema holds "
                "its definitions under $defs"
            ) from exc
        if errors:
            violations = [{"path": e.json_path, "message": e.message} for e in errors]
            listed = "; ".join(f"{v['path']}: {v['message']}" for v in violations)
            raise InputInvalid(
                f"input for {ref} violates its schema: {listed}", violations
            )
        return text

    def _validator(
        self, ref: str, schema: dict[str, Any]
    ) -> jsonschema.Draft202012Validator:
        # Building a validator costs more than most validations; a registered
        # version's schema never changes, so one per version is kept.
        validator = self._validators.get(ref)
        if validator is None:
            validator = validator_for(schema)
            self._validators[ref] = validator
        return validator

    def _priority(self, priority: int | None) -> int:
        if priority is None:
            return 0
        low, high = self.config.queue.priority_min, self.config.queue.priority_max
        if isinstance(priority, bool) or not low <= priority <= high:
            raise RequestRefused(
                f"priority {priority!r} is outside the allowed range {low}..{high}"
            )
        return priority

    def _classes(
        self, request: SubmitRequest, default: str | None, now: float
    ) -> tuple[str, str]:
        """The queue class as asked, and the run class (realtime or batch)
        that orders the task once it is due."""
        if request.not_before is not None and not math.isfinite(request.not_before):
            raise RequestRefused(
                f"not-before time {request.not_before!r} is not a time"
            )
        if request.not_before is not None and (
            request.not_before > now + MAX_NOT_BEFORE_AHEAD
        ):
            raise RequestRefused(
                f"not-before time {_iso(request.not_before)} is more than 10 years "
                "ahead; a task may be deferred 10 years at most",
                field="not_before",
            )
        asked = request.queue_class
        if asked is not None and asked not in QUEUE_CLASSES:
            raise RequestRefused(
                f"unknown queue class {asked!r}; use one of {', '.join(QUEUE_CLASSES)}"
            )
        if asked == "scheduled" and request.schedule is None:
            raise RequestRefused(
                "queue class 'scheduled' is for tasks that schedules make; "
                "add a schedule with 'kos-see schedules add' instead"
            )
        if asked == "deferred" and request.not_before is None:
            raise RequestRefused("queue class 'deferred' needs a not-before time")
        run_class = default or self.config.queue.default_class
        if asked in RUN_CLASSES:
            run_class = asked
        if asked is None:
            deferred = request.not_before is not None and request.not_before > now
            asked = (
                "scheduled"
                if request.schedule
                else ("deferred" if deferred else run_class)
            )
        return asked, run_class

    def _check_same_request(self, task: TaskRecord, new: NewTask) -> None:
        # The fields the caller chose (a key is the tenant's own, so the
        # tenant is the same); one that differs makes a new request.
        compared = (
            ("service", task.service, new.service),
            ("version", task.version, new.version),
            ("input", task.input_digest, new.input_digest),
            ("priority", task.priority, new.priority),
        )
        differing = [name for name, old, asked in compared if old != asked]
        if differing:
            fields = " and ".join(differing)
            raise IdempotencyConflict(
                f"idempotency key {new.idempotency_key!r} was used by task {task.id} "
                f"for {task.service}@{task.version} with another {fields}; use a "
                "new key for a new request",
                task_id=task.id,
                fields=differing,
            )


def _iso(moment: float) -> str:
    try:
        return datetime.fromtimestamp(moment, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return repr(moment)
