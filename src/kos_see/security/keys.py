"""Ed25519 key pairs: made, written, read, used to sign and to verify.

A private key is a PKCS#8 PEM file readable by its owner only (0600); its
public half is a SubjectPublicKeyInfo PEM file beside it. A key is named in
records by its key id, a digest of the raw public key, so that a record says
which key signed it without carrying the key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from kos_see.errors import KeyFileError

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, what: str = "signature") -> bytes:
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"{what} is not valid base64") from exc


@dataclass(frozen=True)
class SigningKey:
    """A private key in memory, with its id and where it came from."""

    private: Ed25519PrivateKey
    path: Path | None = None

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, message: bytes) -> str:
        return b64(self.private.sign(message))


def verify(public: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    try:
        public.verify(unb64(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def generate() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def temporary_beside(path: Path) -> Path:
    """A name next to ``path`` that no other writer uses, process or thread:
    writers that race on one fresh home must never share a temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.new")


def write_pair(key: SigningKey, private_path: Path) -> Path:
    """Write KEY.key (0600, refused if it exists) and KEY.pub; return the .pub."""
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written whole under a temporary name (0600 from the start, so there is
    # no moment when it is readable by others), then linked into place: a
    # link never overwrites a key someone may depend on, and a process that
    # races to read the key finds it complete or not at all.
    temporary = temporary_beside(private_path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.link(temporary, private_path)
    except FileExistsError as exc:
        raise KeyFileError(
            f"{private_path} already exists; choose another name or remove it"
        ) from exc
    finally:
        temporary.unlink(missing_ok=True)
    public_path = private_path.with_suffix(PUBLIC_SUFFIX)
    public_path.write_text(public_pem(key.public))
    return public_path


def load_private(path: Path) -> SigningKey:
    data = _read(path, "private key")
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(
            f"private key {path} is readable by others (mode {mode:o}); "
            f"run: chmod 600 {path}"
        )
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return SigningKey(private, path)


def load_public_pem(data: bytes | str, source: str) -> Ed25519PublicKey:
    raw = data.encode() if isinstance(data, str) else data
    try:
        public = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{source} is not a PEM public key: {exc}") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise KeyFileError(f"{source} is not an Ed25519 public key")
    return public


def load_public(path: Path) -> Ed25519PublicKey:
    return load_public_pem(_read(path, "public key"), str(path))


def load_or_create(path: Path) -> SigningKey:
    """The engine's own key: made on first use, then always the same."""
    if not path.exists():
        try:
            write_pair(generate(), path)
        except KeyFileError:
            pass  # another process made it first; read theirs
    return load_private(path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{what} file {path} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} file {path}: {exc.strerror}") from exc
