"""RFC 8785 canonical JSON: the bytes that signatures and digests cover.

Two parties that hold the same JSON value get the same bytes, whatever order
or spacing either wrote it in, so a signature made by a client in any
language verifies here.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from kos_see.errors import RequestRefused


def canonical_bytes(value: Any, what: str = "request") -> bytes:
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError as exc:
        raise RequestRefused(
            f"{what} holds an integer outside the range JSON numbers keep exactly "
            f"(±2**53-1): {exc}; send it as a string",
            field=what,
        ) from exc
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise RequestRefused(
            f"{what} cannot be written as canonical JSON: {exc}", field=what
        ) from exc


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
