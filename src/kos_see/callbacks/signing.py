"""The signature of a webhook delivery, made here and checked by receivers.

The sender puts the Unix time in ``X-Kos-See-Timestamp`` and
``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` in
``X-Kos-See-Signature``. Signing the timestamp with the body lets a receiver
refuse an old delivery replayed later, by comparing it to its own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Kos-See-Timestamp"
SIGNATURE_HEADER = "X-Kos-See-Signature"
DELIVERY_HEADER = "X-Kos-See-Delivery"
DEFAULT_TOLERANCE = 300.0


def sign_payload(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_payload(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """What a receiver checks: the signature matches, and the timestamp is
    within ``tolerance`` seconds of its clock."""
    try:
        moment = int(timestamp)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - moment) > tolerance:
        return False
    return hmac.compare_digest(sign_payload(secret, moment, body), signature)
