"""The API's documents, as pydantic models: what the OpenAPI document shows.

Requests that change something are signed envelopes; their ``fields`` are
free-form here because the envelope, not the schema, is what the engine
checks (and the signature covers the fields exactly as sent).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kos_see.security.envelope import VERSION

State = Literal[
    "received",
    "queued",
    "leased",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "dead",
]


class Envelope(BaseModel):
    """A request signed with a principal's Ed25519 key (see the README)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal["kos-see/request/v1"] = VERSION
    action: Literal["submit", "cancel", "retry", "read", "list", "admin"]
    fields: dict[str, Any]
    principal: str
    timestamp: str | None = None
    nonce: str | None = None
    signature: str | None = None


class ErrorOut(BaseModel):
    error: str = Field(description="The error's code, e.g. unknown_task.")
    message: str = Field(description="What was wrong, and what to do.")
    model_config = ConfigDict(extra="allow")


class Progress(BaseModel):
    done: float | None
    total: float | None
    message: str | None


class TaskOut(BaseModel):
    id: str
    service: str
    version: str
    digest: str
    tenant: str
    principal: str
    queue_class: str
    run_class: str
    schedule: str | None
    priority: int
    state: State
    attempts: int
    max_attempts: int
    created_at: float
    updated_at: float
    finished_at: float | None
    not_before: float
    progress: Progress
    input: Any
    result: Any
    error: str | None
    error_kind: str | None
    secrets: list[str]
    signed: bool
    request_digest: str | None


class SubmitOut(BaseModel):
    task: TaskOut
    created: bool = Field(description="False: found by its idempotency key.")
    callback_secret: str | None = Field(
        None, description="The HMAC secret of the task's webhook, given once."
    )


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_offset: int | None = Field(description="The offset of the next page.")


class ResultOut(BaseModel):
    task_id: str
    state: State
    finished: bool
    result: Any
    error: str | None
    error_kind: str | None


class TokenOut(BaseModel):
    token: str
    principal: str
    expires_at: float


class ServiceOut(BaseModel):
    name: str
    version: str
    digest: str
    description: str
    registered_at: float
    input_schema: dict[str, Any]


class ScheduleOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    cron: str
    timezone: str
    service: str
    tenant: str
    paused: bool
    next_fire_at: float | None
    last_fire_at: float | None


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None


class DeliveryOut(BaseModel):
    attempt: int
    at: float
    status: int | None = Field(description="The receiver's HTTP status; null: none.")
    error: str | None
    duration: float


class CallbackOut(BaseModel):
    task_id: str
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_at: float
    deliveries: list[DeliveryOut]


class AuditReportOut(BaseModel):
    """The audit log's check: ok, or the first entry that breaks the chain."""

    ok: bool
    entries: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int
    broken_seq: int | None = None
    problem: str | None = None
