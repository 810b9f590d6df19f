"""Short-lived read tokens: what a principal's signed request obtains.

A token is ``kst1.<payload>.<signature>``, both parts base64url: the payload
is canonical JSON naming the principal, its tenant and role, and when the
token expires; the signature is the engine key's (Ed25519) over the payload.
A token grants reads only; every change still needs a signed envelope. It is
checked against the principal's row on each use, so revoking a principal
ends its tokens at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass

from kos_see.errors import PrincipalRevoked, TokenInvalid
from kos_see.security.canonical import canonical_bytes
from kos_see.security.keys import SigningKey, verify
from kos_see.security.principals import PrincipalStore
from kos_see.security.verify import Caller

PREFIX = "kst1"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    principal: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    def __init__(self, key: SigningKey, principals: PrincipalStore) -> None:
        self.key = key
        self.principals = principals

    def issue(
        self, caller: Caller, ttl: float, now: float | None = None
    ) -> IssuedToken:
        now = time.time() if now is None else now
        payload = {
            "sub": caller.principal,
            "tenant": caller.tenant,
            "role": caller.role,
            "signed": caller.signed,
            "iat": round(now, 3),
            "exp": round(now + ttl, 3),
        }
        body = canonical_bytes(payload, "token")
        signature = base64.b64decode(self.key.sign(body))
        token = f"{PREFIX}.{_b64(body)}.{_b64(signature)}"
        return IssuedToken(token, caller.principal, payload["exp"])

    def check(self, token: str, now: float | None = None) -> Caller:
        """The caller a token names; TokenInvalid if it does not hold."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise TokenInvalid(
                "the token is not a kOS SEE read token (kst1.<payload>.<signature>); "
                "get one with POST /v1/tokens"
            )
        try:
            body = _unb64(parts[1])
            signature = base64.b64encode(_unb64(parts[2])).decode()
            payload = json.loads(body)
        except (binascii.Error, ValueError) as exc:
            raise TokenInvalid(f"the token does not decode: {exc}") from exc
        if not verify(self.key.public, body, signature):
            raise TokenInvalid(
                "the token's signature does not match this engine's key; it was "
                "changed, or issued by another engine"
            )
        now = time.time() if now is None else now
        if not isinstance(payload, dict) or not now < float(payload.get("exp", 0)):
            raise TokenInvalid("the token has expired; get a new one from /v1/tokens")
        return self._caller(payload)

    def _caller(self, payload: dict[str, object]) -> Caller:
        name = str(payload.get("sub"))
        record = self.principals.get(name)
        if record is not None and record.revoked:
            raise PrincipalRevoked(
                f"principal {name!r} was revoked; its tokens no longer hold",
                principal=name,
            )
        return Caller(
            principal=name,
            tenant=str(payload.get("tenant")),
            role=None if payload.get("role") is None else str(payload["role"]),
            signed=bool(payload.get("signed")),
            request_digest=None,
        )
