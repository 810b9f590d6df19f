"""DSSE envelopes (Dead Simple Signing Envelope, v1) signed with Ed25519.

The signature covers the pre-authentication encoding of the payload type and
the payload, so that neither can be swapped without breaking it. Standard
tools (securesystemslib, in-toto) verify these envelopes as they are.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kos_see.security.keys import SigningKey, key_id, verify

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_envelope(
    payload: bytes, key: SigningKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE
) -> dict[str, Any]:
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [
            {"keyid": key.key_id, "sig": key.sign(pae(payload_type, payload))}
        ],
    }


def verify_envelope(envelope: dict[str, Any], public: Ed25519PublicKey) -> bytes:
    """The payload if one signature is the key's and valid; else ValueError."""
    payload = base64.b64decode(envelope["payload"], validate=True)
    message = pae(envelope["payloadType"], payload)
    wanted = key_id(public)
    for signature in envelope.get("signatures", []):
        if signature.get("keyid") == wanted and verify(
            public, message, signature.get("sig", "")
        ):
            return payload
    raise ValueError(f"no valid signature by {wanted} on the envelope")


def statement_of(envelope_json: str) -> dict[str, Any]:
    envelope = json.loads(envelope_json)
    return json.loads(base64.b64decode(envelope["payload"]))
