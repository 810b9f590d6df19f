"""The content digest that pins a registered service version.

It covers every file of the service folder (the manifest included), by
relative path and content, skipping caches and hidden files, so that any edit
of code or manifest changes it. It covers regular files only: a FIFO, socket
or device (or a symlink to one, or a symlink that leaves the folder) is
refused and never opened, since reading one may block for good. A stat
signature of the same files lets the worker skip re-hashing a folder that
has not changed since the last check.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from kos_see.errors import ManifestError

MAX_FILES = 2000
MAX_BYTES = 64 * 1024 * 1024
_SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}


def service_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    real_folder = Path(os.path.realpath(folder))
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and d[0] != ".")
        for name in dirs:
            _check_entry(Path(root, name), folder, real_folder, directory=True)
        for name in sorted(names):
            if name[0] != ".":
                path = Path(root, name)
                _check_entry(path, folder, real_folder, directory=False)
                files.append(path)
        if len(files) > MAX_FILES:
            raise ManifestError(
                f"{folder} holds more than {MAX_FILES} files; a service folder "
                "should hold the service's code, not a data set"
            )
    return files


def _check_entry(path: Path, folder: Path, real_folder: Path, directory: bool) -> None:
    """Refuse what the digest cannot cover without the risk of blocking."""
    relative = path.relative_to(folder)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(real_folder):
            raise ManifestError(
                f"{folder}: {relative} is a symlink that leaves the service "
                f"folder (to {target}); copy the file into the folder instead"
            )
        if directory:
            raise ManifestError(
                f"{folder}: {relative} is a symlink to a folder; a service "
                "folder may hold symlinks to regular files only"
            )
        info = os.stat(path)
    if directory and stat.S_ISDIR(info.st_mode):
        return
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError(
            f"{folder}: {relative} is a {_kind(info.st_mode)}, not a regular "
            "file; a service folder may hold regular files and folders only"
        )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, refused unless it is a regular file.

    Opened without blocking and checked on the open descriptor, so that a
    file swapped for a FIFO after the folder was walked cannot hang a reader.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ManifestError(
                f"{path} is a {_kind(mode)}, not a regular file; it is not read"
            )
        return handle.read()


def content_digest(folder: Path) -> str:
    hasher = hashlib.sha256()
    total = 0
    for path in service_files(folder):
        data = read_regular_file(path)
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
