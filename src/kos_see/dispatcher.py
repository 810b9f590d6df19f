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

from kos_see.audit.log import AuditLog
from kos_see.audit.verify import VerifyReport, verify_log
from kos_see.config import EngineConfig
from kos_see.errors import (
    BadSignature,
    ConfigError,
    IdempotencyConflict,
    InputInvalid,
    KosSeeError,
    PermissionDenied,
    RequestRefused,
    TaskNotFound,
)
from kos_see.models import NewTask, ServiceRecord, TaskRecord, new_task_id
from kos_see.policy.authorize import Grant, authorize_submit, require
from kos_see.policy.gate import PolicyGate
from kos_see.registry import Registry
from kos_see.registry.schema import validator_for
from kos_see.security.envelope import Envelope, parse_envelope
from kos_see.security.principals import ANY_TENANT, PrincipalStore
from kos_see.security.verify import Caller, RequestVerifier
from kos_see.store import Store, TaskFilter

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
    tenant: str | None = None  # None: the caller's tenant, else "default"
    principal: str = "local"
    priority: int | None = None
    queue_class: str | None = None
    not_before: float | None = None
    idempotency_key: str | None = None
    schedule: str | None = None  # set by the scheduler for the tasks it makes


# The members of a submit envelope's fields, named as SubmitRequest names them.
SUBMIT_FIELDS = (
    "service",
    "input",
    "tenant",
    "priority",
    "queue_class",
    "not_before",
    "idempotency_key",
)
ENGINE = "engine"  # who the audit log names for the engine's own calls
AUDIT = "audit:log"  # the policy object of verifying the audit log


def submit_fields(request: SubmitRequest) -> dict[str, Any]:
    """The fields a client signs for ``request`` (unset ones left out)."""
    fields = {name: getattr(request, name) for name in SUBMIT_FIELDS}
    return {k: v for k, v in fields.items() if v is not None or k == "input"}


def request_from_fields(fields: dict[str, Any]) -> SubmitRequest:
    """The SubmitRequest a signed submit envelope's fields ask for."""
    unknown = sorted(set(fields) - set(SUBMIT_FIELDS))
    if unknown:
        raise RequestRefused(
            f"submit request has unknown field(s) {', '.join(unknown)}; its fields "
            f"are {', '.join(SUBMIT_FIELDS)}",
            field=unknown[0],
        )
    if not isinstance(fields.get("service"), str):
        raise RequestRefused("submit request needs a service name", field="service")
    return SubmitRequest(
        **{k: fields[k] for k in SUBMIT_FIELDS if k in fields and k != "input"},
        input=fields.get("input", {}),
    )


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
        gate: PolicyGate | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.notify = notify or (lambda _reason: None)
        self.gate = gate
        self.audit = audit
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
        try:
            parsed = parse_envelope(envelope)
            return self._request_verifier.verify(parsed)
        except KosSeeError as exc:
            claimed = envelope.get("principal") if isinstance(envelope, dict) else None
            if isinstance(envelope, Envelope):
                claimed = envelope.principal
            self._audit(
                "request",
                {"outcome": "refused", "stage": "authenticate", **_error(exc)},
                principal=str(claimed)[:128] if claimed is not None else None,
            )
            raise

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
        callback_host: str | None = None,
    ) -> Submitted:
        """Enqueue ``request``. ``callback_host``: the host of the webhook the
        task will call when it ends; a caller needs ``submit callback:HOST``
        in the task's tenant as well as the host being in
        ``callbacks.allowed_hosts``."""
        now = time.time() if now is None else now
        grant = Grant()
        try:
            submitted = self._submit(request, now, caller, grant, callback_host)
        except KosSeeError as exc:
            self._audit_request(
                "submit",
                caller,
                request.tenant,
                None,
                grant,
                exc,
                service=request.service,
            )
            raise
        self._audit_request(
            "submit",
            caller,
            submitted.task.tenant,
            submitted.task,
            grant,
            None,
            service=submitted.task.service,
            created=submitted.created,
        )
        return submitted

    def _submit(
        self,
        request: SubmitRequest,
        now: float,
        caller: Caller | None,
        grant: Grant,
        callback_host: str | None = None,
    ) -> Submitted:
        if caller is not None:
            self._check_signed(caller, "submit", request)
            request = replace(
                request,
                tenant=caller.acts_for(request.tenant),
                principal=caller.principal,
            )
        elif request.tenant is None:
            request = replace(request, tenant="default")
        assert request.tenant is not None
        check_identity(request.tenant, request.principal)
        check_idempotency_key(request.idempotency_key)
        record, manifest = self.registry.resolve(request.service)
        input_text = self._check_input(request.input, manifest.input_schema, record.ref)
        queue_class, run_class = self._classes(request, manifest.queue_class, now)
        priority = self._priority(request.priority)
        timeout = manifest.timeout or self.config.execution.worker_timeout
        if caller is not None:
            authorize_submit(
                self._gate(),
                caller,
                request.tenant,
                record.name,
                manifest,
                queue_class,
                priority,
                timeout,
                grant,
            )
            if callback_host is not None:
                require(
                    self._gate(),
                    caller,
                    request.tenant,
                    "submit",
                    f"callback:{callback_host}",
                    grant,
                )
        else:
            grant.secrets = list(manifest.secrets)  # the engine's own call
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
            timeout=timeout,
            max_attempts=1
            + (
                manifest.retry_limit
                if manifest.retry_limit is not None
                else self.config.queue.retry_limit
            ),
            created_at=now,
            secrets=json.dumps(grant.secrets) if grant.secrets else None,
            request_digest=caller.request_digest if caller is not None else None,
            runner=grant.runner,
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
        grant = Grant()
        try:
            self._authorize_task(task_id, caller, "cancel", "cancel", grant)
            task = self.store.cancel_task(task_id, time.time() if now is None else now)
        except KosSeeError as exc:
            self._audit_request("cancel", caller, None, None, grant, exc, task_id)
            raise
        self._audit_request("cancel", caller, task.tenant, task, grant, None)
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
        TaskNotFound, or RequestRefused if it is not dead. A caller needs
        the right to submit the task's service."""
        grant = Grant()
        try:
            task = self._authorize_task(task_id, caller, "retry", "submit", grant)
            task = self._retry(task, now)
        except KosSeeError as exc:
            self._audit_request("retry", caller, None, None, grant, exc, task_id)
            raise
        self._audit_request("retry", caller, task.tenant, task, grant, None)
        return task

    def _retry(self, task: TaskRecord, now: float | None) -> TaskRecord:
        task_id = task.id
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
        """A task; a caller needs ``read service:NAME`` in the task's tenant.
        The engine's own reads (caller None) are not requests and not audited."""
        if caller is None:
            return self._task(task_id)
        grant = Grant()
        try:
            task = self._authorize_task(task_id, caller, "read", "read", grant)
        except KosSeeError as exc:
            self._audit_request("read", caller, None, None, grant, exc, task_id)
            raise
        self._audit_request("read", caller, task.tenant, task, grant, None)
        return task

    def list_tasks(
        self, where: TaskFilter, caller: Caller | None = None
    ) -> list[TaskRecord]:
        """Tasks matching ``where``; for a caller, only its tenant's (unless it
        acts for every tenant) and only of services it may read."""
        if caller is None:
            return self.store.list_tasks(where)
        grant = Grant()
        try:
            self._check_signed(caller, "read", None)
            if caller.tenant != ANY_TENANT:
                caller.acts_for(where.tenant)
                where = replace(where, tenant=caller.tenant)
            found = self.store.list_tasks(where)
            allowed: dict[tuple[str, str], bool] = {}
            for task in found:
                key = (task.tenant, task.service)
                if key not in allowed:
                    decision = self._gate().decide(
                        caller, task.tenant, "read", f"service:{task.service}"
                    )
                    grant.decisions.append(decision)
                    allowed[key] = decision.allowed
        except KosSeeError as exc:
            self._audit_request("list", caller, where.tenant, None, grant, exc)
            raise
        self._audit_request("list", caller, where.tenant, None, grant, None)
        return [t for t in found if allowed[(t.tenant, t.service)]]

    def verify_audit(self, caller: Caller | None = None) -> VerifyReport:
        """Check the audit log's chain and signed checkpoints; a caller needs
        ``admin audit:log`` in its tenant (the log holds every tenant's)."""
        if self.audit is None:
            raise ConfigError("this dispatcher has no audit log to verify")
        if caller is not None:
            grant = Grant()
            try:
                self._check_signed(caller, "read", None)
                require(self._gate(), caller, caller.tenant, "admin", AUDIT, grant)
            except KosSeeError as exc:
                self._audit_request("audit_verify", caller, None, None, grant, exc)
                raise
            self._audit_request("audit_verify", caller, None, None, grant, None)
        # Entries still pending are part of the log the caller asks about.
        self.audit.flush()
        return verify_log(self.store, self.audit.key.public)

    # the gate and the audit log

    def _task(self, task_id: str) -> TaskRecord:
        task = self.store.get_task(task_id)
        if task is None:
            raise TaskNotFound(f"no task {task_id!r}", task_id=task_id)
        return task

    def _authorize_task(
        self,
        task_id: str,
        caller: Caller | None,
        verb: str,
        action: str,
        grant: Grant,
    ) -> TaskRecord:
        task = self._task(task_id)
        if caller is None:
            return task
        self._check_signed(caller, verb, None, task_id)
        if caller.tenant not in (ANY_TENANT, task.tenant):
            raise PermissionDenied(
                f"task {task_id} belongs to tenant {task.tenant!r}; principal "
                f"{caller.principal!r} acts for tenant {caller.tenant!r}",
                principal=caller.principal,
                tenant=task.tenant,
            )
        require(
            self._gate(), caller, task.tenant, action, f"service:{task.service}", grant
        )
        return task

    def _check_signed(
        self,
        caller: Caller,
        verb: str,
        request: SubmitRequest | None,
        task_id: str | None = None,
    ) -> None:
        """The dispatcher acts only on the request that was signed: the same
        action, the same task, the same submit fields."""
        if caller.action is None:
            return
        same_action = caller.action == verb or (
            verb == "read" and caller.action in ("read", "list")
        )
        if not same_action:
            raise BadSignature(
                f"the request was signed for action {caller.action!r}, not {verb!r}",
                principal=caller.principal,
            )
        if task_id is not None and caller.fields.get("task_id") != task_id:
            raise BadSignature(
                f"the request was signed for task {caller.fields.get('task_id')!r}, "
                f"not {task_id!r}",
                principal=caller.principal,
            )
        if request is not None:
            asked = submit_fields(request)
            # A signed submit without input asks for {} (request_from_fields).
            signed = {"input": {}, **caller.fields}
            for name in SUBMIT_FIELDS:
                if signed.get(name) != asked.get(name):
                    raise BadSignature(
                        f"the submit's {name} differs from the signed request's",
                        principal=caller.principal,
                        field=name,
                    )

    def _gate(self) -> PolicyGate:
        if self.gate is None:
            raise ConfigError(
                "this dispatcher has no policy gate, so it refuses every request "
                "from a principal (deny by default); open it through the engine"
            )
        return self.gate

    def _audit_request(
        self,
        action: str,
        caller: Caller | None,
        tenant: str | None,
        task: TaskRecord | None,
        grant: Grant,
        error: KosSeeError | None,
        task_id: str | None = None,
        **more: Any,
    ) -> None:
        body: dict[str, Any] = {
            "action": action,
            "outcome": "refused" if error is not None else "accepted",
            "signed": caller.signed if caller is not None else None,
            "request_digest": caller.request_digest if caller is not None else None,
            **grant.audit(),
            **more,
        }
        if task is not None:
            body["state"] = task.state.value
            body["runner"] = task.runner
            body["secrets"] = task.secret_names()
        if error is not None:
            body.update(_error(error))
        self._audit(
            "request",
            body,
            task_id=task.id if task is not None else task_id,
            principal=caller.principal if caller is not None else ENGINE,
            tenant=task.tenant if task is not None else tenant,
        )

    def _audit(self, kind: str, body: dict[str, Any], **columns: Any) -> None:
        if self.audit is not None:
            self.audit.record(kind, body, **columns)

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


def _error(exc: KosSeeError) -> dict[str, Any]:
    return {"error": exc.code, "message": exc.message}


def _iso(moment: float) -> str:
    try:
        return datetime.fromtimestamp(moment, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return repr(moment)
