"""Who calls the API: a signed envelope, or a read token it obtained.

Changes (submit, cancel, retry) carry a signed envelope in the body. Reads
carry ``Authorization: Bearer <token>`` (from POST /v1/tokens), or a signed
envelope of action ``read`` in the ``X-Kos-See-Request`` header (base64url
JSON), whose fields name the method and path it is for, so that it cannot be
spent on another read.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from kos_see.api.tokens import TokenIssuer
from kos_see.dispatcher import Dispatcher
from kos_see.errors import AuthenticationRequired, RequestRefused
from kos_see.security.verify import Caller

REQUEST_HEADER = "x-kos-see-request"


def encode_header(envelope: dict[str, Any]) -> str:
    text = json.dumps(envelope, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_header(value: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise RequestRefused(
            f"the {REQUEST_HEADER} header is not base64url JSON: {exc}",
            field=REQUEST_HEADER,
        ) from exc


class Authenticator:
    def __init__(self, dispatcher: Dispatcher, issuer: TokenIssuer) -> None:
        self.dispatcher = dispatcher
        self.issuer = issuer

    def change(self, envelope: Any, action: str) -> tuple[Caller, dict[str, Any]]:
        """The caller of a signed change, and the fields it signed."""
        if not isinstance(envelope, dict) or envelope.get("action") != action:
            got = envelope.get("action") if isinstance(envelope, dict) else None
            raise RequestRefused(
                f"this endpoint takes a request of action {action!r}, not {got!r}",
                field="action",
            )
        caller = self.dispatcher.authenticate(envelope)
        return caller, dict(envelope["fields"])

    def read(
        self,
        authorization: str | None,
        signed_header: str | None,
        method: str,
        path: str,
    ) -> Caller:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationRequired(
                    "the Authorization header must be 'Bearer <token>'",
                    field="authorization",
                )
            return self.issuer.check(token.strip())
        if signed_header:
            return self.signed_read(decode_header(signed_header), method, path)
        raise AuthenticationRequired(
            "reads need 'Authorization: Bearer <token>' (from POST /v1/tokens) or "
            f"a signed request of action 'read' in the {REQUEST_HEADER} header"
        )

    def signed_read(self, envelope: Any, method: str, path: str) -> Caller:
        caller, fields = self.change(envelope, "read")
        if fields.get("method") != method or fields.get("path") != path:
            raise RequestRefused(
                f"the signed read is for {fields.get('method')} "
                f"{fields.get('path')}, not {method} {path}",
                field="fields",
            )
        return caller
