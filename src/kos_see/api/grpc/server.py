"""The gRPC server: Submit, Get, Cancel, Watch, ListServices, and health.

Each call authenticates as its REST twin does (signed envelope, or a read
token in the ``authorization`` metadata) and calls the same ``ApiActions``.
An engine error ends the call with the status code ``api.status`` gives,
its message as the details, and its JSON form in the ``kos-see-error``
trailing metadata.

Known shortcoming: the server is synchronous, so each open Watch holds one
thread of the pool (``MAX_WORKERS``) until its task ends or it is cancelled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kos_see.api.actions import ApiActions
from kos_see.api.auth import Authenticator
from kos_see.api.grpc import engine_pb2, engine_pb2_grpc
from kos_see.api.status import http_status
from kos_see.errors import KosSeeError, RequestRefused
from kos_see.models import TaskRecord
from kos_see.security.verify import Caller

log = logging.getLogger(__name__)

SERVICE_NAME = "kos_see.v1.Engine"
ERROR_METADATA = "kos-see-error"
MAX_WORKERS = 32
Reply = TypeVar("Reply")


# The gRPC code of each HTTP status that engine errors answer with.
GRPC_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(exc: KosSeeError) -> grpc.StatusCode:
    return GRPC_STATUS.get(http_status(exc), grpc.StatusCode.UNKNOWN)


def task_message(task: TaskRecord) -> engine_pb2.Task:
    document = task.to_dict()
    return engine_pb2.Task(
        id=task.id,
        service=task.service,
        version=task.version,
        tenant=task.tenant,
        state=task.state.value,
        attempts=task.attempts,
        created_at=task.created_at,
        finished_at=task.finished_at or 0.0,
        result_json=json.dumps(document["result"]),
        error=task.error or "",
        document_json=json.dumps(document),
    )


def _envelope(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RequestRefused(
            f"envelope_json is not JSON: {exc}", field="envelope_json"
        ) from exc


class EngineServicer(engine_pb2_grpc.EngineServicer):
    def __init__(self, actions: ApiActions, auth: Authenticator) -> None:
        self.actions = actions
        self.auth = auth

    def Submit(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            caller, fields = self.auth.change(
                _envelope(request.envelope_json), "submit"
            )
            outcome = self.actions.submit(caller, fields)
            return engine_pb2.SubmitReply(
                task=task_message(outcome.submitted.task),
                created=outcome.submitted.created,
            )

        return _guard(context, call)

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            caller = self._reader(request.envelope_json, context, "Get")
            return task_message(self.actions.get(caller, request.task_id))

        return _guard(context, call)

    def Cancel(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            caller, fields = self.auth.change(
                _envelope(request.envelope_json), "cancel"
            )
            task_id = fields.get("task_id")
            if not isinstance(task_id, str):
                raise RequestRefused("cancel needs fields.task_id", field="task_id")
            return task_message(self.actions.cancel(caller, task_id))

        return _guard(context, call)

    def ListServices(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            caller = self._reader(request.envelope_json, context, "ListServices")
            return engine_pb2.ServiceList(
                services=[
                    engine_pb2.Service(
                        name=s.name,
                        version=s.version,
                        digest=s.digest,
                        description=str(s.manifest.get("description") or ""),
                    )
                    for s in self.actions.services(caller)
                ]
            )

        return _guard(context, call)

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        try:
            caller = self._reader(request.envelope_json, context, "Watch")
            self.actions.get(caller, request.task_id)
        except KosSeeError as exc:
            _abort(context, exc)
        yield from self._watch(request.task_id, request.after_id, context)

    def _watch(
        self, task_id: str, after: int, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        feed = self.actions.feed
        while context.is_active():
            seen = feed.generation()
            events = feed.read(task_id, after)
            for event in events:
                after = event.id
                yield engine_pb2.Event(
                    id=event.id,
                    task_id=event.task_id,
                    attempt=event.attempt,
                    at=event.at,
                    kind=event.kind,
                    data_json=json.dumps(event.to_dict()),
                )
            if events:
                continue
            task = feed.task(task_id)
            if task is None or task.terminal:
                if not feed.read(task_id, after):
                    return
                continue  # the final flush's events: send them first
            feed.wait(seen)

    def _reader(
        self, envelope_json: str, context: grpc.ServicerContext, method: str
    ) -> Caller:
        path = f"/{SERVICE_NAME}/{method}"
        if envelope_json:
            return self.auth.signed_read(_envelope(envelope_json), "GRPC", path)
        metadata = dict(context.invocation_metadata())
        return self.auth.read(metadata.get("authorization"), None, "GRPC", path)


def _guard(context: grpc.ServicerContext, call: Callable[[], Reply]) -> Reply:
    try:
        return call()
    except KosSeeError as exc:
        _abort(context, exc)
    except Exception as exc:  # the engine's own failure, said as one
        log.exception("grpc call failed", extra={"action": "grpc_error"})
        _abort(context, KosSeeError(f"internal error: {exc!r}"))
    raise AssertionError("abort returns only by raising")


def _abort(context: grpc.ServicerContext, exc: KosSeeError) -> None:
    context.set_trailing_metadata(((ERROR_METADATA, json.dumps(exc.to_dict())),))
    context.abort(grpc_status(exc), exc.message)


def start_grpc(
    actions: ApiActions, auth: Authenticator, host: str, port: int
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started server on host:port (0: any free port); returns it, the
    port it listens on, and its health servicer."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS))
    engine_pb2_grpc.add_EngineServicer_to_server(EngineServicer(actions, auth), server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise KosSeeError(f"cannot listen for gRPC on {host}:{port}")
    server.start()
    for name in ("", SERVICE_NAME):
        checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, checker
