"""The REST interface (FastAPI): tasks, their events as SSE, and the rest.

Every change is a signed envelope in the body; every read is authenticated
by a read token or a signed read (see ``api.auth``), except the endpoints
that ``api.open_endpoints`` opens (health, readiness, metrics). Engine
errors answer with the status ``api.status`` gives and their JSON form.
"""

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kos_see.api import schemas
from kos_see.api.actions import ApiActions
from kos_see.api.auth import Authenticator
from kos_see.api.status import http_status
from kos_see.errors import KosSeeError, NotAvailable, RequestRefused, TaskNotFound
from kos_see.models import ServiceRecord, TaskRecord
from kos_see.security.verify import Caller
from kos_see.telemetry.metrics import CONTENT_TYPE, metrics_registry, render

# No "from __future__ import annotations": FastAPI reads the annotations of
# the endpoints defined inside create_app, which name its local dependencies.
log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorOut, "description": text}
    for status, text in (
        (400, "Bad request: a field named in the body is wrong."),
        (401, "Not authenticated: unsigned, bad signature, bad or expired token."),
        (403, "The caller may not do this."),
        (404, "No such task, service or schedule."),
        (409, "Conflicts with the task's state or an idempotency key."),
        (422, "The request or the task's input does not match its schema."),
        (500, "The engine failed."),
        (503, "The store is unavailable; retry."),
    )
}
SSE_RESPONSE = {
    200: {
        "description": "Server-sent events: one per task event (id, event = its "
        "kind, data = its JSON), then an 'end' event when the task has ended.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
METRICS_RESPONSE = {
    200: {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
MAX_OFFSET = 1_000_000_000
TaskId = Annotated[str, Path(description="A task id.", max_length=64)]


def create_app(actions: ApiActions, auth: Authenticator) -> FastAPI:
    app = FastAPI(
        title="kOS Service Execution Engine",
        version="1",
        description="Submit, watch and manage tasks of registered services.",
    )
    _error_handlers(app)
    reader = _reader(auth)
    open_reader = _open_reader(auth, set(actions.config.api.open_endpoints))
    page_max = actions.config.api.page_max

    @app.get("/healthz", response_model=schemas.HealthOut, responses=ERRORS)
    def health(_caller: Annotated[None, Depends(open_reader("health"))]) -> Any:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.HealthOut, responses=ERRORS)
    def readiness(_caller: Annotated[None, Depends(open_reader("readiness"))]) -> Any:
        """Ready: the store answers."""
        try:
            actions.ready()
        except KosSeeError as exc:
            return JSONResponse(
                {"status": "unavailable", "detail": exc.message}, status_code=503
            )
        return {"status": "ok"}

    registry = metrics_registry(actions.store)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={**ERRORS, **METRICS_RESPONSE, 501: {"model": schemas.ErrorOut}},
    )
    def metrics(_caller: Annotated[None, Depends(open_reader("metrics"))]) -> Response:
        """The engine's Prometheus metrics, read from the store (501 when
        telemetry.enable_metrics is false or telemetry.provider is none)."""
        telemetry = actions.config.telemetry
        if not telemetry.enable_metrics or telemetry.provider != "prometheus":
            raise NotAvailable(
                "metrics are turned off (telemetry.enable_metrics = false or "
                "telemetry.provider = none)"
            )
        return Response(render(registry), media_type=CONTENT_TYPE)

    @app.post(
        "/v1/tokens", response_model=schemas.TokenOut, status_code=201, responses=ERRORS
    )
    def token(envelope: schemas.Envelope) -> Any:
        """A short-lived read token, for a signed request of action 'read'
        (fields: ttl seconds, optional)."""
        caller, fields = auth.change(_document(envelope), "read")
        issued = actions.token(caller, fields)
        return {
            "token": issued.token,
            "principal": issued.principal,
            "expires_at": issued.expires_at,
        }

    @app.post(
        "/v1/tasks",
        response_model=schemas.SubmitOut,
        status_code=201,
        responses={**ERRORS, 200: {"model": schemas.SubmitOut}},
    )
    def submit(envelope: schemas.Envelope, response: Response) -> Any:
        """Submit a task (a signed request of action 'submit'; fields: service,
        input, tenant, priority, queue_class, not_before, idempotency_key,
        callback {url, secret}). 200 instead of 201: an earlier task with the
        same idempotency key."""
        caller, fields = auth.change(_document(envelope), "submit")
        outcome = actions.submit(caller, fields)
        if not outcome.submitted.created:
            response.status_code = 200
        return {
            "task": task_document(outcome.submitted.task),
            "created": outcome.submitted.created,
            "callback_secret": outcome.callback_secret,
        }

    @app.get("/v1/tasks", response_model=schemas.TaskPage, responses=ERRORS)
    def list_tasks(
        caller: Annotated[Caller, Depends(reader)],
        state: schemas.State | None = None,
        service: Annotated[str | None, Query(max_length=64)] = None,
        tenant: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=page_max)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Any:
        """Tasks, newest first, filtered by state, service and tenant."""
        page = actions.list(caller, state, service, tenant, limit, offset)
        return {
            "items": [task_document(t) for t in page.items],
            "next_offset": page.next_offset,
        }

    @app.get("/v1/tasks/{task_id}", response_model=schemas.TaskOut, responses=ERRORS)
    def get_task(task_id: TaskId, caller: Annotated[Caller, Depends(reader)]) -> Any:
        """One task."""
        return task_document(actions.get(caller, task_id))

    @app.get(
        "/v1/tasks/{task_id}/result",
        response_model=schemas.ResultOut,
        responses=ERRORS,
    )
    def result(task_id: TaskId, caller: Annotated[Caller, Depends(reader)]) -> Any:
        """A task's result document, or its error; ``finished`` false while it
        has not ended."""
        task = actions.get(caller, task_id)
        return {
            "task_id": task.id,
            "state": task.state.value,
            "finished": task.terminal,
            "result": task.result_value(),
            "error": task.error,
            "error_kind": task.error_kind,
        }

    @app.get(
        "/v1/tasks/{task_id}/callback",
        response_model=schemas.CallbackOut,
        responses=ERRORS,
    )
    def callback(task_id: TaskId, caller: Annotated[Caller, Depends(reader)]) -> Any:
        """The task's webhook: its state and every delivery attempt."""
        return actions.callback(caller, task_id)

    @app.post(
        "/v1/tasks/{task_id}/cancel", response_model=schemas.TaskOut, responses=ERRORS
    )
    def cancel(task_id: TaskId, envelope: schemas.Envelope) -> Any:
        """Cancel a task (a signed request of action 'cancel', fields: task_id)."""
        caller, fields = auth.change(_document(envelope), "cancel")
        _same_task(fields, task_id)
        return task_document(actions.cancel(caller, task_id))

    @app.post(
        "/v1/tasks/{task_id}/retry", response_model=schemas.TaskOut, responses=ERRORS
    )
    def retry(task_id: TaskId, envelope: schemas.Envelope) -> Any:
        """Requeue a dead task (a signed request of action 'retry', fields:
        task_id)."""
        caller, fields = auth.change(_document(envelope), "retry")
        _same_task(fields, task_id)
        return task_document(actions.retry(caller, task_id))

    @app.get(
        "/v1/tasks/{task_id}/events",
        response_class=EventSourceResponse,
        responses={**ERRORS, **SSE_RESPONSE},
    )
    def events(
        task_id: TaskId,
        caller: Annotated[Caller, Depends(reader)],
        last_event_id: Annotated[
            str | None, Header(description="Resume after this event id.")
        ] = None,
        after: Annotated[
            int, Query(ge=0, description="Start after this event id.")
        ] = 0,
    ) -> EventSourceResponse:
        """The task's events as server-sent events, from the first (or after
        ``Last-Event-ID``) until the task ends."""
        actions.get(caller, task_id)  # an unknown task answers 404, not a stream
        start = _resume_point(last_event_id, after)
        return EventSourceResponse(_event_stream(actions, task_id, start), ping=15)

    @app.get("/v1/services", response_model=list[schemas.ServiceOut], responses=ERRORS)
    def services(caller: Annotated[Caller, Depends(reader)]) -> Any:
        """Registered services, every version."""
        return [service_document(s) for s in actions.services(caller)]

    @app.get(
        "/v1/schedules", response_model=list[schemas.ScheduleOut], responses=ERRORS
    )
    def schedules(caller: Annotated[Caller, Depends(reader)]) -> Any:
        """Cron schedules."""
        return [s.to_dict() for s in actions.schedules(caller)]

    @app.get("/v1/dead-letters", response_model=schemas.TaskPage, responses=ERRORS)
    def dead_letters(
        caller: Annotated[Caller, Depends(reader)],
        service: Annotated[str | None, Query(max_length=64)] = None,
        tenant: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=page_max)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Any:
        """Dead tasks (all attempts used), newest first."""
        page = actions.list(caller, "dead", service, tenant, limit, offset)
        return {
            "items": [task_document(t) for t in page.items],
            "next_offset": page.next_offset,
        }

    @app.get(
        "/v1/audit/verify",
        response_model=schemas.AuditReportOut,
        responses=ERRORS,
    )
    def audit_verify(caller: Annotated[Caller, Depends(reader)]) -> Any:
        """Verify the audit log's hash chain and signed checkpoints (needs
        ``admin audit:log``); ``ok`` false names the first broken entry."""
        return actions.audit_verify(caller)

    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KosSeeError)
    async def engine_error(_request: Request, exc: KosSeeError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=http_status(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "message": e["msg"]}
            for e in exc.errors()
        ]
        listed = "; ".join(f"{p['where']}: {p['message']}" for p in problems)
        return JSONResponse(
            {
                "error": "refused",
                "message": f"invalid request: {listed}",
                "problems": problems,
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(
        _request: Request, exc: StarletteHTTPException
    ) -> JSONResponse:
        code = "unknown_path" if exc.status_code == 404 else "refused"
        return JSONResponse(
            {"error": code, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("api request failed", extra={"action": "api_error"})
        return JSONResponse(
            {"error": "engine_error", "message": f"internal error: {exc!r}"},
            status_code=500,
        )


def _reader(auth: Authenticator) -> Any:
    def reader(
        request: Request,
        authorization: Annotated[
            str | None, Header(description="Bearer <token> from POST /v1/tokens.")
        ] = None,
        x_kos_see_request: Annotated[
            str | None,
            Header(description="A signed request of action 'read', base64url JSON."),
        ] = None,
    ) -> Caller:
        return auth.read(
            authorization, x_kos_see_request, request.method, request.url.path
        )

    return reader


def _open_reader(auth: Authenticator, open_endpoints: set[str]) -> Any:
    reader = _reader(auth)

    def for_endpoint(name: str) -> Any:
        def check(
            request: Request,
            authorization: Annotated[str | None, Header()] = None,
            x_kos_see_request: Annotated[str | None, Header()] = None,
        ) -> None:
            if name not in open_endpoints:
                reader(request, authorization, x_kos_see_request)

        return check

    return for_endpoint


def _document(envelope: schemas.Envelope) -> dict[str, Any]:
    # Only members the sender gave: the signature covers exactly those.
    return envelope.model_dump(exclude_unset=True) | {"v": envelope.v}


def _same_task(fields: dict[str, Any], task_id: str) -> None:
    if fields.get("task_id") != task_id:
        raise TaskNotFound(
            f"the signed request is for task {fields.get('task_id')!r}, not the "
            f"task {task_id!r} in the path",
            task_id=task_id,
        )


def _resume_point(last_event_id: str | None, after: int) -> int:
    if last_event_id is None:
        return after
    try:
        return max(after, int(last_event_id))
    except ValueError:
        raise RequestRefused(
            f"Last-Event-ID {last_event_id!r} is not an event id (an integer)",
            field="last-event-id",
        ) from None


async def _event_stream(
    actions: ApiActions, task_id: str, after: int
) -> AsyncIterator[dict[str, str]]:
    feed = actions.feed
    while True:
        seen = feed.generation()
        events = await run_in_threadpool(feed.read, task_id, after)
        for event in events:
            after = event.id
            yield _sse(event.id, event.kind, event.to_dict())
        if events:
            continue  # there may be more
        task = await run_in_threadpool(feed.task, task_id)
        if task is None or task.terminal:
            # Events of the final flush were written with the state: read once more.
            for event in await run_in_threadpool(feed.read, task_id, after):
                after = event.id
                yield _sse(event.id, event.kind, event.to_dict())
            state = task.state.value if task else "unknown"
            yield {
                "event": "end",
                "data": json.dumps({"task_id": task_id, "state": state}),
            }
            return
        await feed.wait_async(seen)


def _sse(event_id: int, kind: str, data: dict[str, Any]) -> dict[str, str]:
    return {"id": str(event_id), "event": kind, "data": json.dumps(data)}


def task_document(task: TaskRecord) -> dict[str, Any]:
    return task.to_dict()


def service_document(record: ServiceRecord) -> dict[str, Any]:
    manifest = record.manifest
    return {
        "name": record.name,
        "version": record.version,
        "digest": record.digest,
        "description": str(manifest.get("description") or ""),
        "registered_at": record.registered_at,
        "input_schema": manifest.get("input_schema") or {"type": "object"},
    }
