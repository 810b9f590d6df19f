"""Principals and the nonces of their requests, kept in the store.

A principal is a name, the tenant it acts for (``*``: any tenant, for
operators), a role the policy gives rights to, and one Ed25519 public key.
Revoking keeps the row, so that old audit entries still name a known
principal, and refuses every later request signed by it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.engine import Row

from kos_see.errors import ReplayedRequest, RequestRefused, StoreError, UnknownPrincipal
from kos_see.security.keys import key_id, load_public_pem, public_pem
from kos_see.store.schema import nonces, principals

ANY_TENANT = "*"
# Forgetting old nonces costs a DELETE; one in this many inserts pays it.
PRUNE_EVERY = 256
# Every request reads a principal and writes a nonce: as text statements these
# compile in microseconds (a Core select or insert costs a millisecond).
PRINCIPAL_COLUMNS = "name, tenant, role, key_id, public_key, created_at, revoked_at"
BY_NAME = sa.text(f"SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE name = :v")
BY_KEY = sa.text(f"SELECT {PRINCIPAL_COLUMNS} FROM principals WHERE key_id = :v")
INSERT_NONCE = sa.text(
    "INSERT INTO nonces (principal, nonce, seen_at) VALUES (:principal, :nonce, :at)"
)


class PrincipalExists(RequestRefused):
    """A principal of that name, or with that key, exists already."""

    code = "principal_exists"


@dataclass(frozen=True)
class PrincipalRecord:
    name: str
    tenant: str
    role: str
    key_id: str
    public_key: str  # PEM
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> Ed25519PublicKey:
        return load_public_pem(self.public_key, f"public key of principal {self.name}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PrincipalStore:
    """Principals and nonces on the SQL store's connections and write lock."""

    def __init__(self, store: Any) -> None:
        if not all(hasattr(store, a) for a in ("engine", "_write", "_read")):
            raise StoreError(
                f"principals need the SQL store; {type(store).__name__} has none"
            )
        self.store = store
        self._inserts = 0

    def add(
        self,
        name: str,
        tenant: str,
        role: str,
        public: Ed25519PublicKey,
        now: float | None = None,
    ) -> PrincipalRecord:
        record = PrincipalRecord(
            name=name,
            tenant=tenant,
            role=role,
            key_id=key_id(public),
            public_key=public_pem(public),
            created_at=time.time() if now is None else now,
            revoked_at=None,
        )
        existing = self.by_key(record.key_id)
        if existing is not None:
            raise PrincipalExists(
                f"that public key already belongs to principal {existing.name!r}; "
                "each principal has a key of its own",
                principal=existing.name,
            )
        try:
            with self.store._write() as conn:
                conn.execute(principals.insert().values(**asdict(record)))
        except (sa.exc.IntegrityError, sqlite3.IntegrityError) as exc:
            raise PrincipalExists(
                f"a principal named {name!r} exists already; revoke it and add "
                "the new key under another name",
                principal=name,
            ) from exc
        return record

    def get(self, name: str) -> PrincipalRecord | None:
        return self._one(BY_NAME, name)

    def by_key(self, key: str) -> PrincipalRecord | None:
        return self._one(BY_KEY, key)

    def require(self, name: str) -> PrincipalRecord:
        record = self.get(name)
        if record is None:
            raise UnknownPrincipal(
                f"no principal named {name!r}; add it with 'kos-see principals add'",
                principal=name,
            )
        return record

    def list(self) -> list[PrincipalRecord]:
        with self.store._read() as conn:
            rows = conn.execute(sa.select(principals).order_by(principals.c.name))
            return [_record(row) for row in rows]

    def revoke(self, name: str, now: float | None = None) -> PrincipalRecord:
        record = self.require(name)
        if record.revoked:
            return record
        at = time.time() if now is None else now
        with self.store._write() as conn:
            conn.execute(
                principals.update()
                .where(principals.c.name == name, principals.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
        return self.require(name)

    def remember_nonce(
        self, principal: str, nonce: str, now: float, window: float
    ) -> None:
        """Record a nonce as used; ReplayedRequest if it was, within the window."""
        try:
            with self.store._write() as conn:
                conn.execute(
                    INSERT_NONCE, {"principal": principal, "nonce": nonce, "at": now}
                )
                self._inserts += 1
                if self._inserts % PRUNE_EVERY == 0:
                    conn.execute(nonces.delete().where(nonces.c.seen_at < now - window))
        except (sa.exc.IntegrityError, sqlite3.IntegrityError) as exc:
            raise ReplayedRequest(
                f"nonce {nonce!r} of principal {principal!r} was already used; "
                "each request needs a new nonce (a replayed request is refused)",
                principal=principal,
            ) from exc

    def prune_nonces(self, now: float, window: float) -> int:
        with self.store._write() as conn:
            result = conn.execute(
                nonces.delete().where(nonces.c.seen_at < now - window)
            )
            return int(result.rowcount or 0)

    def _one(self, statement: Any, value: str) -> PrincipalRecord | None:
        with self.store._read() as conn:
            row = conn.execute(statement, {"v": value}).first()
        return None if row is None else _record(row)


def _record(row: Row[Any]) -> PrincipalRecord:
    return PrincipalRecord(*row)
