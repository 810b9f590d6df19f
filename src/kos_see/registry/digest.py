"""The content digest that pins a registered service version.

It covers every file of the service folder (the manifest included), by
relative path and content, skipping caches and hidden files, so that any edit
of code or manifest changes it. A stat signature of the same files lets the
worker skip re-hashing a folder that has not changed since the last check.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kos_see.errors import ManifestError

MAX_FILES = 2000
MAX_BYTES = 64 * 1024 * 1024
_SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}


def service_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and d[0] != ".")
        files.extend(Path(root, n) for n in sorted(names) if n[0] != ".")
        if len(files) > MAX_FILES:
            raise ManifestError(
                f"{folder} holds more than {MAX_FILES} files; a service folder "
                "should hold the service's code, not a data set"
            )
    return files


def content_digest(folder: Path) -> str:
    hasher = hashlib.sha256()
    total = 0
    for path in service_files(folder):
        data = path.read_bytes()
        total += len(data)
        if total > MAX_BYTES:
            raise ManifestError(f"{folder} holds more than {MAX_BYTES} bytes")
        relative = path.relative_to(folder).as_posix().encode()
        hasher.update(len(relative).to_bytes(4, "big") + relative)
        hasher.update(hashlib.sha256(data).digest())
    return "sha256:" + hasher.hexdigest()


def service_dirs(folder: Path) -> list[Path]:
    """The folders whose entries the digest covers; adding, removing or
    renaming a file changes one of their modification times."""
    dirs = [folder]
    for root, names, _files in os.walk(folder):
        names[:] = sorted(d for d in names if d not in _SKIPPED_DIRS and d[0] != ".")
        dirs.extend(Path(root, d) for d in names)
    return dirs


Signature = tuple[tuple[int, int, int, int], ...]


def stat_signature(paths: list[Path]) -> Signature:
    """Cheap fingerprint of ``paths``: inode, size, mtime and ctime of each.
    The ctime matters: tools that restore an mtime after an edit (``cp -p``,
    ``rsync -a``, ``tar x``) cannot restore it."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)
