"""Engine errors on the wire: the HTTP status of each, and back to the class.

Every error crosses an interface as its JSON form (``KosSeeError.to_dict``:
``error`` code, ``message`` and details). The client turns that form back into
the same class, so a remote caller catches what a local one would.
"""

from __future__ import annotations

import importlib
from typing import Any

from kos_see import errors
from kos_see.errors import KosSeeError

# By error code; a code not listed takes its nearest listed base class's.
HTTP_STATUS: dict[str, int] = {
    "engine_error": 500,
    "bad_usage": 400,
    "bad_config": 400,
    "bad_home": 500,
    "refused": 400,
    "invalid_input": 422,
    "unknown_service": 404,
    "unknown_task": 404,
    "unknown_schedule": 404,
    "service_changed": 409,
    "idempotency_conflict": 409,
    "unsigned_request": 401,
    "unknown_principal": 401,
    "principal_revoked": 401,
    "bad_signature": 401,
    "replayed_request": 401,
    "stale_request": 401,
    "authentication_required": 401,
    "bad_token": 401,
    "permission_denied": 403,
    "store_unavailable": 503,
    "not_available": 501,
    "task_failed": 409,
}


def http_status(exc: KosSeeError) -> int:
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if code in HTTP_STATUS:
            return HTTP_STATUS[code]
    return 500


# Modules that define engine errors of their own, beside kos_see.errors.
ERROR_MODULES = (
    "kos_see.store.schedule_store",
    "kos_see.security.principals",
    "kos_see.queue.schedules",
)


def _classes() -> dict[str, type[KosSeeError]]:
    for name in ERROR_MODULES:
        importlib.import_module(name)
    found: dict[str, type[KosSeeError]] = {}
    pending: list[type[KosSeeError]] = [KosSeeError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def error_from_dict(document: Any, status: int | None = None) -> KosSeeError:
    """The engine error an error document names; an unknown code becomes the
    nearest class its HTTP status implies, so nothing arrives untyped."""
    if not isinstance(document, dict) or not isinstance(document.get("message"), str):
        return errors.ServerUnreachable(
            f"the server answered {status} without an engine error document: "
            f"{str(document)[:200]}",
            status=status,
        )
    code = str(document.get("error", "engine_error"))
    message = document["message"]
    details = {k: v for k, v in document.items() if k not in ("error", "message")}
    cls = _classes().get(code)
    if cls is None:
        cls = errors.RequestRefused if status and status < 500 else KosSeeError
    if issubclass(cls, errors.InputInvalid):
        return cls(message, list(details.get("violations") or []))
    exc = cls(message, **details)
    exc.code = code  # an unknown code keeps its name on the nearest class
    return exc
