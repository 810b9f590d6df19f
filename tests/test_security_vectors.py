"""Published test vectors: RFC 8032 (Ed25519) and RFC 8785 (canonical JSON).

The vectors live in tests/data with their source named; the engine's own
key and canonical-JSON code must reproduce them exactly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kos_see.security.canonical import canonical_bytes
from kos_see.security.keys import SigningKey, b64, verify

DATA = Path(__file__).parent / "data"
ED25519 = json.loads((DATA / "rfc8032_ed25519.json").read_text())
JCS = json.loads((DATA / "rfc8785_jcs.json").read_text())


@pytest.mark.parametrize("vector", ED25519["vectors"], ids=lambda v: v["name"])
def test_rfc8032_ed25519_vectors_sign_and_verify(vector: dict[str, str]) -> None:
    secret = bytes.fromhex(vector["secret_key"])
    message = bytes.fromhex(vector["message"])
    expected = bytes.fromhex(vector["signature"])
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(secret))

    raw_public = key.public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert raw_public.hex() == vector["public_key"]
    assert key.sign(message) == b64(expected)
    assert verify(key.public, message, b64(expected))
    assert not verify(key.public, message + b"\x00", b64(expected))
    flipped = bytes([expected[0] ^ 1]) + expected[1:]
    assert not verify(key.public, message, b64(flipped))


@pytest.mark.parametrize("document", JCS["documents"], ids=lambda d: d["name"])
def test_rfc8785_documents_canonicalize_as_published(document: dict[str, str]) -> None:
    value = json.loads(document["input"])
    assert canonical_bytes(value) == document["output"].encode("utf-8")


@pytest.mark.parametrize("bits,expected", JCS["numbers"])
def test_rfc8785_appendix_b_numbers(bits: str, expected: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_bytes(number) == expected.encode()
