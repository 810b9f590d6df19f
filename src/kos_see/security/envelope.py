"""The signed request envelope: what a caller sends to any interface.

An envelope is a JSON object::

    {"v": "kos-see/request/v1", "action": "submit", "fields": {...},
     "principal": "alice", "timestamp": "2026-12-03T21:00:00.123Z",
     "nonce": "9f2c...", "signature": "<base64 Ed25519 signature>"}

The signature covers the RFC 8785 canonical JSON of every member but
``signature`` itself. The version tag is signed too, so a signature can never
be read as a signature over some other kind of document. An unsigned
envelope has no ``signature`` (and may have no nonce or timestamp); it is
accepted only where ``allow_unsigned = true``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kos_see.errors import RequestRefused
from kos_see.security.canonical import canonical_bytes, sha256_digest
from kos_see.security.keys import SigningKey

VERSION = "kos-see/request/v1"
ACTIONS = ("submit", "cancel", "retry", "read", "list", "admin")
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
MEMBERS = {"v", "action", "fields", "principal", "timestamp", "nonce", "signature"}


@dataclass(frozen=True)
class Envelope:
    action: str
    fields: dict[str, Any]
    principal: str
    timestamp: str | None
    nonce: str | None
    signature: str | None

    @property
    def signed(self) -> bool:
        return self.signature is not None

    def signed_part(self) -> dict[str, Any]:
        part: dict[str, Any] = {
            "v": VERSION,
            "action": self.action,
            "fields": self.fields,
            "principal": self.principal,
        }
        if self.timestamp is not None:
            part["timestamp"] = self.timestamp
        if self.nonce is not None:
            part["nonce"] = self.nonce
        return part

    def message(self) -> bytes:
        """The bytes the signature covers."""
        return canonical_bytes(self.signed_part())

    def digest(self) -> str:
        return sha256_digest(self.message())

    def to_dict(self) -> dict[str, Any]:
        document = self.signed_part()
        if self.signature is not None:
            document["signature"] = self.signature
        return document

    def moment(self) -> float | None:
        """The timestamp as seconds since the epoch, or None if unparseable."""
        if self.timestamp is None:
            return None
        try:
            parsed = datetime.fromisoformat(self.timestamp)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            return None
        return parsed.timestamp()


def format_timestamp(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign_request(
    key: SigningKey,
    principal: str,
    action: str,
    fields: Mapping[str, Any],
    now: float | None = None,
    nonce: str | None = None,
) -> Envelope:
    unsigned = Envelope(
        action=action,
        fields=dict(fields),
        principal=principal,
        timestamp=format_timestamp(time.time() if now is None else now),
        nonce=nonce or new_nonce(),
        signature=None,
    )
    return Envelope(**{**unsigned.__dict__, "signature": key.sign(unsigned.message())})


def unsigned_request(
    principal: str, action: str, fields: Mapping[str, Any]
) -> Envelope:
    return Envelope(action, dict(fields), principal, None, None, None)


def parse_envelope(document: Any) -> Envelope:
    """Check an envelope's shape; every problem names the member at fault."""
    if isinstance(document, Envelope):
        return document
    if not isinstance(document, Mapping):
        raise RequestRefused(
            f"a request must be a JSON object, not {type(document).__name__}",
            field="request",
        )
    unknown = sorted(set(document) - MEMBERS)
    if unknown:
        raise RequestRefused(
            f"request has unknown member(s) {', '.join(unknown)}; a request has "
            f"{', '.join(sorted(MEMBERS))}",
            field=unknown[0],
        )
    version = document.get("v", VERSION)
    if version != VERSION:
        raise RequestRefused(
            f"request version {version!r} is not supported; use {VERSION!r}",
            field="v",
        )
    action = _member(document, "action", str)
    if action not in ACTIONS:
        raise RequestRefused(
            f"unknown action {action!r}; use one of {', '.join(ACTIONS)}",
            field="action",
        )
    fields = _member(document, "fields", dict)
    principal = _member(document, "principal", str)
    timestamp = _member(document, "timestamp", str, required=False)
    nonce = _member(document, "nonce", str, required=False)
    signature = _member(document, "signature", str, required=False)
    if signature is not None and (timestamp is None or nonce is None):
        missing = "timestamp" if timestamp is None else "nonce"
        raise RequestRefused(f"a signed request needs a {missing}", field=missing)
    if nonce is not None and not NONCE.fullmatch(nonce):
        raise RequestRefused(
            "nonce must be 16 to 128 letters, digits, _ or -", field="nonce"
        )
    return Envelope(action, fields, principal, timestamp, nonce, signature)


def _member(
    document: Mapping[str, Any], name: str, kind: type, required: bool = True
) -> Any:
    value = document.get(name)
    if value is None:
        if required:
            raise RequestRefused(f"request has no {name!r}", field=name)
        return None
    if not isinstance(value, kind):
        raise RequestRefused(
            f"request member {name!r} must be a {kind.__name__}, not "
            f"{type(value).__name__}",
            field=name,
        )
    return value
