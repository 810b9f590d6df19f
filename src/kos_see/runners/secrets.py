"""Secrets as files: only those an attempt was granted, in its own folder.

The engine keeps each secret's value in ``<home>/secrets/NAME`` (mode 0600,
set with ``kos-see secrets set``). A task records, at submit, the secrets its
manifest declares and the policy granted its principal; each attempt gets a
copy of exactly those in ``secrets/`` inside its working directory (files
0400, folder 0500), named by ``KOS_SEE_SECRETS_DIR``, and never in its
environment. The copies go with the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretMissing(Exception):
    """A granted secret has no value in the engine's secret folder."""


def deliver(names: tuple[str, ...], source: Path | None, workdir: Path) -> Path | None:
    """Copy the granted secrets into ``workdir/secrets``; None if there are none."""
    if not names:
        return None
    target = workdir / "secrets"
    target.mkdir(mode=0o700)
    for name in names:
        value = _read(source, name)
        path = target / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as out:
            out.write(value)
    target.chmod(0o500)
    return target


def _read(source: Path | None, name: str) -> bytes:
    if source is None:
        raise SecretMissing(
            f"secret {name!r} was granted but this engine has no secret folder"
        )
    try:
        return (source / name).read_bytes()
    except FileNotFoundError as exc:
        raise SecretMissing(
            f"secret {name!r} was granted but has no value in {source}; set it "
            f"with 'kos-see secrets set {name}'"
        ) from exc
