"""What an audit entry and a checkpoint are, and the hashes that chain them.

An entry's hash is SHA-256 over the RFC 8785 canonical JSON of its columns
(the previous entry's hash included) as an array, a newline, and its body's
stored bytes, so changing, removing or moving any entry breaks every hash
after it. The body is hashed as stored (compact JSON with sorted keys), not
re-canonicalised: that keeps an entry's cost to microseconds, and a verifier
in any language needs only the stored text. A checkpoint is the engine key's
signature over one entry's position and hash: whoever holds the database but
not the key cannot rewrite the chain up to a checkpoint, and a pruned log
still starts from a position the engine vouched for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from kos_see.security.canonical import canonical_bytes, sha256_digest
from kos_see.security.keys import SigningKey

# The previous hash of the very first entry.
GENESIS = "sha256:" + "0" * 64
CHECKPOINT_VERSION = "kos-see/audit-checkpoint/v1"


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: float
    kind: str
    task_id: str | None
    principal: str | None
    tenant: str | None
    body: str  # canonical JSON
    prev_hash: str
    hash: str

    def body_value(self) -> Any:
        return json.loads(self.body)

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["body"] = self.body_value()
        return document


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: float
    key_id: str
    signature: str


def entry_hash(
    seq: int,
    at: float,
    kind: str,
    task_id: str | None,
    principal: str | None,
    tenant: str | None,
    body: str,
    prev_hash: str,
) -> str:
    header = [seq, at, kind, task_id, principal, tenant, prev_hash]
    return sha256_digest(
        canonical_bytes(header, "audit entry") + b"\n" + body.encode("utf-8")
    )


def body_text(body: dict[str, Any]) -> str:
    """An entry's body as stored: compact JSON, keys sorted."""
    return json.dumps(
        body,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=str,
    )


def recomputed(entry: AuditEntry) -> str:
    return entry_hash(
        entry.seq,
        entry.at,
        entry.kind,
        entry.task_id,
        entry.principal,
        entry.tenant,
        entry.body,
        entry.prev_hash,
    )


def checkpoint_message(seq: int, hash_: str, at: float, key_id: str) -> bytes:
    return canonical_bytes(
        {
            "v": CHECKPOINT_VERSION,
            "seq": seq,
            "hash": hash_,
            "at": at,
            "key_id": key_id,
        },
        "audit checkpoint",
    )


def sign_checkpoint(key: SigningKey, seq: int, hash_: str, at: float) -> Checkpoint:
    message = checkpoint_message(seq, hash_, at, key.key_id)
    return Checkpoint(seq, hash_, at, key.key_id, key.sign(message))
