from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedRequest(_message.Message):
    __slots__ = ("envelope_json",)
    ENVELOPE_JSON_FIELD_NUMBER: _ClassVar[int]
    envelope_json: str
    def __init__(self, envelope_json: _Optional[str] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id", "envelope_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    envelope_json: str
    def __init__(self, task_id: _Optional[str] = ..., envelope_json: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("task_id", "after_id", "envelope_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    after_id: int
    envelope_json: str
    def __init__(self, task_id: _Optional[str] = ..., after_id: _Optional[int] = ..., envelope_json: _Optional[str] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("envelope_json",)
    ENVELOPE_JSON_FIELD_NUMBER: _ClassVar[int]
    envelope_json: str
    def __init__(self, envelope_json: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "service", "version", "tenant", "state", "attempts", "created_at", "finished_at", "result_json", "error", "document_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    service: str
    version: str
    tenant: str
    state: str
    attempts: int
    created_at: float
    finished_at: float
    result_json: str
    error: str
    document_json: str
    def __init__(self, id: _Optional[str] = ..., service: _Optional[str] = ..., version: _Optional[str] = ..., tenant: _Optional[str] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., document_json: _Optional[str] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("task", "created")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task: Task
    created: bool
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "task_id", "attempt", "at", "kind", "data_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    task_id: str
    attempt: int
    at: float
    kind: str
    data_json: str
    def __init__(self, id: _Optional[int] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., at: _Optional[float] = ..., kind: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "version", "digest", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    description: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ServiceList(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ...) -> None: ...
