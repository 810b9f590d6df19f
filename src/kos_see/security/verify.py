"""Who is asking: check a request envelope and name its caller.

The checks run in an order that tells a caller nothing it could not already
know: the principal must exist and hold an unrevoked key before the
signature is checked, and the signature must hold before the timestamp and
the nonce are looked at, so that a forged request cannot burn a real
principal's nonce.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kos_see.config import SecurityConfig
from kos_see.errors import (
    BadSignature,
    PermissionDenied,
    PrincipalRevoked,
    SignatureRequired,
    StaleRequest,
    UnknownPrincipal,
)
from kos_see.security.envelope import Envelope
from kos_see.security.keys import verify
from kos_see.security.principals import ANY_TENANT, PrincipalStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """The verified (or, where allowed, merely claimed) author of a request."""

    principal: str
    tenant: str  # the tenant it acts for; "*" for operators of every tenant
    role: str | None  # None: an unsigned caller that no principal row backs
    signed: bool
    request_digest: str | None  # of the signed envelope; None when unsigned
    # What the envelope asked for: the dispatcher refuses to act on a request
    # other than the one signed (None: a caller made without an envelope).
    action: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def acts_for(self, asked: str | None) -> str:
        """The tenant a request of this caller is for: a principal acts for
        its own tenant; one of every tenant (``*``) for the one it asks for,
        else ``default``. Asking for another tenant is refused."""
        if self.tenant == ANY_TENANT:
            return asked or "default"
        if asked and asked != self.tenant:
            raise PermissionDenied(
                f"principal {self.principal!r} acts for tenant {self.tenant!r} and "
                f"may not act for tenant {asked!r}; only a principal of every "
                "tenant (*) chooses its tenant",
                principal=self.principal,
                tenant=asked,
            )
        return self.tenant


class RequestVerifier:
    def __init__(
        self,
        principals: PrincipalStore,
        config: SecurityConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.principals = principals
        self.config = config
        self.clock = clock

    def verify(self, envelope: Envelope) -> Caller:
        if not envelope.signed:
            return self._unsigned(envelope)
        record = self.principals.get(envelope.principal)
        if record is None:
            raise UnknownPrincipal(
                f"principal {envelope.principal!r} is not known to this engine; "
                "an operator adds it with 'kos-see principals add'",
                principal=envelope.principal,
            )
        if record.revoked:
            raise PrincipalRevoked(
                f"principal {record.name!r} was revoked; its key ({record.key_id}) "
                "signs nothing any more",
                principal=record.name,
            )
        assert envelope.signature is not None
        if not verify(record.public(), envelope.message(), envelope.signature):
            raise BadSignature(
                f"the signature does not match the request and the key of principal "
                f"{record.name!r} ({record.key_id}): the request was changed after "
                "signing, or signed with another key",
                principal=record.name,
            )
        now = self.clock()
        self._check_time(envelope, now)
        assert envelope.nonce is not None
        self.principals.remember_nonce(
            record.name, envelope.nonce, now, self.config.replay_window
        )
        return Caller(
            principal=record.name,
            tenant=record.tenant,
            role=record.role,
            signed=True,
            request_digest=envelope.digest(),
            action=envelope.action,
            fields=envelope.fields,
        )

    def _unsigned(self, envelope: Envelope) -> Caller:
        if not self.config.allow_unsigned:
            raise SignatureRequired(
                "this engine accepts only signed requests (security.allow_unsigned "
                "= false); sign with a principal's key (the CLI's --key option)",
                principal=envelope.principal,
            )
        # Trusted as claimed: allow_unsigned is the operator's statement that
        # whoever reaches this engine may say who they are. The policy still
        # decides, and the audit log marks the request unsigned.
        record = self.principals.get(envelope.principal)
        if record is not None and record.revoked:
            raise PrincipalRevoked(
                f"principal {record.name!r} was revoked", principal=record.name
            )
        return Caller(
            principal=envelope.principal,
            tenant=record.tenant
            if record
            else str(envelope.fields.get("tenant") or "default"),
            role=record.role if record else None,
            signed=False,
            request_digest=None,
            action=envelope.action,
            fields=envelope.fields,
        )

    def _check_time(self, envelope: Envelope, now: float) -> None:
        moment = envelope.moment()
        skew = self.config.max_clock_skew
        if moment is None:
            raise StaleRequest(
                f"request timestamp {envelope.timestamp!r} is not an RFC 3339 time "
                "with a zone (e.g. 2026-12-03T21:00:00.000Z)",
                field="timestamp",
            )
        if abs(now - moment) > skew:
            ahead = moment > now
            raise StaleRequest(
                f"request timestamp {envelope.timestamp} is {abs(now - moment):.1f} s "
                f"{'ahead of' if ahead else 'behind'} the engine's clock; at most "
                f"{skew:g} s is allowed (security.max_clock_skew)",
                field="timestamp",
            )
