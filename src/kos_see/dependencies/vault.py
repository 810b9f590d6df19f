"""The artifact vault: content-addressed storage on any fsspec filesystem.

An artifact is stored once under its SHA-256 digest
(``<root>/sha256/ab/abcdef...``) and read back only after its content was
hashed again, so a corrupted or swapped object is refused rather than used.
A local folder is the default; any fsspec URL (``memory://``, ``s3://`` with
its package installed, ...) works the same.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from kos_see.errors import ArtifactNotFound, UsageError, VaultError

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoredArtifact:
    digest: str
    size: int


class Vault:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.fs, root = url_to_fs(url)
        except (ValueError, ImportError) as exc:
            raise VaultError(f"vault URL {url!r} cannot be opened: {exc}") from exc
        self.root = root.rstrip("/")

    def _object_path(self, digest: str) -> str:
        if not DIGEST_RE.match(digest):
            raise UsageError(
                f"{digest!r} is not an artifact digest; expected sha256:<64 hex>"
            )
        hexdigest = digest.removeprefix("sha256:")
        return f"{self.root}/sha256/{hexdigest[:2]}/{hexdigest}"

    def put_bytes(self, data: bytes) -> StoredArtifact:
        digest = sha256_digest(data)
        path = self._object_path(digest)
        try:
            if not self.fs.exists(path):
                self._write_new(path, data)
        except OSError as exc:
            raise VaultError(f"cannot store {digest} in {self.url}: {exc}") from exc
        return StoredArtifact(digest, len(data))

    def _write_new(self, path: str, data: bytes) -> None:
        # Written beside and moved into place, so a reader never sees half an
        # object under a digest.
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        partial = f"{path}.part-{os.getpid()}-{os.urandom(4).hex()}"
        self.fs.pipe_file(partial, data)
        self.fs.mv(partial, path)

    def put_file(self, source: Path) -> StoredArtifact:
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
        return self.put_bytes(data)

    def get_bytes(self, digest: str, max_bytes: int | None = None) -> bytes:
        path = self._object_path(digest)
        try:
            with self.fs.open(path, "rb") as handle:
                data = (
                    handle.read() if max_bytes is None else handle.read(max_bytes + 1)
                )
        except FileNotFoundError as exc:
            raise ArtifactNotFound(
                f"no artifact {digest} in the vault at {self.url}; store it with "
                "'kos-see artifacts put FILE'",
                digest=digest,
            ) from exc
        except OSError as exc:
            raise VaultError(f"cannot read {digest} from {self.url}: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise VaultError(
                f"artifact {digest} is larger than the cap of {max_bytes} bytes"
            )
        if sha256_digest(data) != digest:
            raise VaultError(
                f"the vault's copy of {digest} does not match its digest "
                f"(now {sha256_digest(data)}); it was altered or corrupted"
            )
        return data

    def has(self, digest: str) -> bool:
        return bool(self.fs.exists(self._object_path(digest)))

    def list(self) -> Iterator[StoredArtifact]:
        base = f"{self.root}/sha256"
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, info in sorted(found.items()):
            name = path.rsplit("/", 1)[-1]
            if re.fullmatch(r"[0-9a-f]{64}", name):
                yield StoredArtifact("sha256:" + name, int(info.get("size") or 0))


def read_url(url: str, allowed_schemes: list[str], max_bytes: int) -> bytes:
    """The bytes at ``url`` (any fsspec URL whose scheme config allows),
    refused past ``max_bytes``."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme not in allowed_schemes:
        allowed = ", ".join(allowed_schemes) or "none"
        raise VaultError(
            f"artifact URL {url!r} uses scheme {scheme!r}, which "
            f"dependencies.url_schemes does not allow (allowed: {allowed})"
        )
    try:
        with fsspec.open(url, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except (OSError, ValueError, ImportError) as exc:
        raise VaultError(f"cannot read artifact URL {url!r}: {exc}") from exc
    if len(data) > max_bytes:
        raise VaultError(f"artifact URL {url!r} is larger than {max_bytes} bytes")
    return data
