"""The Python client of the engine's REST API, sync (``Client``) and async
(``AsyncClient``), on httpx.

It signs every change with the principal's key, reads with a short-lived
token it obtains (and renews) by a signed request, streams a task's events
(resuming with ``Last-Event-ID`` after a dropped connection) and raises the
engine's own errors (``kos_see.errors``) as the server names them::

    from kos_see.client import Client
    from kos_see.security.keys import load_private

    with Client("http://127.0.0.1:8470", "alice", load_private(path)) as c:
        task = c.submit("word-count", {"text": "a b c"})["task"]
        for event in c.events(task["id"]):
            print(event["kind"], event)
        print(c.result(task["id"]))
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse, connect_sse

from kos_see.api.status import error_from_dict
from kos_see.errors import KosSeeError, ServerUnreachable
from kos_see.security.envelope import sign_request, unsigned_request
from kos_see.security.keys import SigningKey

# A token is renewed this long before it expires.
RENEW_MARGIN = 30.0
DEFAULT_TIMEOUT = 30.0
RECONNECTS = 5


class _Requests:
    """What both clients send: envelopes, paths and parameters."""

    def __init__(self, principal: str, key: SigningKey | None) -> None:
        self.principal = principal
        self.key = key
        self.token: str | None = None
        self.token_expires = 0.0

    def envelope(self, action: str, fields: dict[str, Any]) -> dict[str, Any]:
        if self.key is None:
            return unsigned_request(self.principal, action, fields).to_dict()
        return sign_request(self.key, self.principal, action, fields).to_dict()

    def token_valid(self) -> bool:
        return (
            self.token is not None and time.time() < self.token_expires - RENEW_MARGIN
        )

    def keep_token(self, document: dict[str, Any]) -> None:
        self.token = document["token"]
        self.token_expires = float(document["expires_at"])

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def submit_fields(
    service: str,
    input: Any = None,
    *,
    tenant: str | None = None,
    priority: int | None = None,
    queue_class: str | None = None,
    not_before: float | None = None,
    idempotency_key: str | None = None,
    callback_url: str | None = None,
    callback_secret: str | None = None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "service": service,
        "input": {} if input is None else input,
    }
    optional = {
        "tenant": tenant,
        "priority": priority,
        "queue_class": queue_class,
        "not_before": not_before,
        "idempotency_key": idempotency_key,
    }
    fields.update({k: v for k, v in optional.items() if v is not None})
    if callback_url is not None:
        callback = {"url": callback_url}
        if callback_secret is not None:
            callback["secret"] = callback_secret
        fields["callback"] = callback
    return fields


def _list_params(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _parse(response: httpx.Response) -> Any:
    if response.is_success:
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text
    try:
        document = response.json()
    except ValueError:
        document = response.text
    raise error_from_dict(document, response.status_code)


def _unreachable(url: str, exc: httpx.HTTPError) -> ServerUnreachable:
    return ServerUnreachable(
        f"cannot reach the engine at {url}: {type(exc).__name__}: {exc}", url=url
    )


def _event(sse: Any) -> dict[str, Any]:
    data = json.loads(sse.data)
    if sse.event == "end":
        return {"kind": "end", **data}
    return data


class Client:
    def __init__(
        self,
        url: str,
        principal: str,
        key: SigningKey | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._r = _Requests(principal, key)
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc
        return _parse(response)

    def _change(self, path: str, action: str, fields: dict[str, Any]) -> Any:
        return self._send("POST", path, json=self._r.envelope(action, fields))

    def _read(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._send("GET", path, params=params, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        if not self._r.token_valid():
            self.token()
        return self._r.auth_headers()

    def token(self, ttl: float | None = None) -> str:
        """A fresh read token (the client gets and renews one by itself)."""
        fields = {} if ttl is None else {"ttl": ttl}
        self._r.keep_token(self._change("/v1/tokens", "read", fields))
        assert self._r.token is not None
        return self._r.token

    def submit(self, service: str, input: Any = None, **options: Any) -> dict[str, Any]:
        """Submit a task; returns {task, created, callback_secret}."""
        return self._change(
            "/v1/tasks", "submit", submit_fields(service, input, **options)
        )

    def get(self, task_id: str) -> dict[str, Any]:
        return self._read(f"/v1/tasks/{task_id}")

    def list(
        self,
        state: str | None = None,
        service: str | None = None,
        tenant: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        params = _list_params(
            state=state, service=service, tenant=tenant, limit=limit, offset=offset
        )
        return self._read("/v1/tasks", params)

    def result(self, task_id: str) -> dict[str, Any]:
        return self._read(f"/v1/tasks/{task_id}/result")

    def callback(self, task_id: str) -> dict[str, Any]:
        """The task's webhook state and every delivery attempt."""
        return self._read(f"/v1/tasks/{task_id}/callback")

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._change(
            f"/v1/tasks/{task_id}/cancel", "cancel", {"task_id": task_id}
        )

    def retry(self, task_id: str) -> dict[str, Any]:
        return self._change(f"/v1/tasks/{task_id}/retry", "retry", {"task_id": task_id})

    def services(self) -> list[dict[str, Any]]:
        return self._read("/v1/services")

    def schedules(self) -> list[dict[str, Any]]:
        return self._read("/v1/schedules")

    def dead_letters(self, **filters: Any) -> dict[str, Any]:
        return self._read("/v1/dead-letters", _list_params(**filters))

    def audit_verify(self) -> dict[str, Any]:
        return self._read("/v1/audit/verify")

    def health(self) -> dict[str, Any]:
        return self._send("GET", "/healthz")

    def metrics(self) -> str:
        return self._read("/metrics")

    def events(self, task_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """The task's events until it ends (the last is {"kind": "end",
        "state": ...}); a dropped stream is resumed from the last event."""
        last, failures = after, 0
        while True:
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    f"/v1/tasks/{task_id}/events",
                    headers={**self._headers(), "Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(None, connect=self._http.timeout.connect),
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                        _parse(source.response)
                    for sse in source.iter_sse():
                        event = _event(sse)
                        yield event
                        if sse.event == "end":
                            return
                        last = int(sse.id or last)
                        failures = 0
            except httpx.HTTPError as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise _unreachable(self.url, exc) from exc
                time.sleep(min(2.0, 0.1 * 2**failures))

    def wait(self, task_id: str) -> dict[str, Any]:
        """Follow the task's events until it ends; returns the ended task."""
        for _ in self.events(task_id):
            pass
        return self.get(task_id)


class AsyncClient:
    def __init__(
        self,
        url: str,
        principal: str,
        key: SigningKey | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._r = _Requests(principal, key)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc
        return _parse(response)

    async def _change(self, path: str, action: str, fields: dict[str, Any]) -> Any:
        return await self._send("POST", path, json=self._r.envelope(action, fields))

    async def _read(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await self._send(
            "GET", path, params=params, headers=await self._headers()
        )

    async def _headers(self) -> dict[str, str]:
        if not self._r.token_valid():
            await self.token()
        return self._r.auth_headers()

    async def token(self, ttl: float | None = None) -> str:
        fields = {} if ttl is None else {"ttl": ttl}
        self._r.keep_token(await self._change("/v1/tokens", "read", fields))
        assert self._r.token is not None
        return self._r.token

    async def submit(
        self, service: str, input: Any = None, **options: Any
    ) -> dict[str, Any]:
        return await self._change(
            "/v1/tasks", "submit", submit_fields(service, input, **options)
        )

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self._read(f"/v1/tasks/{task_id}")

    async def list(self, **filters: Any) -> dict[str, Any]:
        return await self._read("/v1/tasks", _list_params(**filters))

    async def result(self, task_id: str) -> dict[str, Any]:
        return await self._read(f"/v1/tasks/{task_id}/result")

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self._change(
            f"/v1/tasks/{task_id}/cancel", "cancel", {"task_id": task_id}
        )

    async def retry(self, task_id: str) -> dict[str, Any]:
        return await self._change(
            f"/v1/tasks/{task_id}/retry", "retry", {"task_id": task_id}
        )

    async def services(self) -> list[dict[str, Any]]:
        return await self._read("/v1/services")

    async def schedules(self) -> list[dict[str, Any]]:
        return await self._read("/v1/schedules")

    async def dead_letters(self, **filters: Any) -> dict[str, Any]:
        return await self._read("/v1/dead-letters", _list_params(**filters))

    async def callback(self, task_id: str) -> dict[str, Any]:
        return await self._read(f"/v1/tasks/{task_id}/callback")

    async def audit_verify(self) -> dict[str, Any]:
        return await self._read("/v1/audit/verify")

    async def health(self) -> dict[str, Any]:
        return await self._send("GET", "/healthz")

    async def metrics(self) -> str:
        return await self._read("/metrics")

    async def events(
        self, task_id: str, after: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        last, failures = after, 0
        while True:
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    f"/v1/tasks/{task_id}/events",
                    headers={**(await self._headers()), "Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(None, connect=self._http.timeout.connect),
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        _parse(source.response)
                    async for sse in source.aiter_sse():
                        yield _event(sse)
                        if sse.event == "end":
                            return
                        last = int(sse.id or last)
                        failures = 0
            except httpx.HTTPError as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise _unreachable(self.url, exc) from exc
                import asyncio

                await asyncio.sleep(min(2.0, 0.1 * 2**failures))

    async def wait(self, task_id: str) -> dict[str, Any]:
        async for _ in self.events(task_id):
            pass
        return await self.get(task_id)


__all__ = ["AsyncClient", "Client", "KosSeeError"]
