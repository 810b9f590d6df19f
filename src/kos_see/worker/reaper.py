"""Finding processes that escaped their attempt's process group.

A service may start a grandchild that leaves its group (``setsid``) and
outlives the attempt. The serving process declares itself a child subreaper,
so such orphans are re-parented to it rather than to init; a sweep then finds
its children that carry an attempt's ``KOS_SEE_TASK_ID`` but belong to no
running attempt, kills them and reaps them. Children of the fork
server never exec'd, so their recorded environment is the server's: each
writes its task id over a blank one there (see ``forkserver._mark_task``). A
process that exec'd with a scrubbed environment after leaving the working
directory is not recognised; cgroups close that gap where the host offers
them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
from collections.abc import Collection

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_MARK = b"KOS_SEE_TASK_ID="
_WORKDIR = re.compile(r"^([0-9a-f]{24})-\d+$")


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class OrphanSweeper:
    """Kills and reaps our children that belong to no running attempt.

    A zombie child has no environment left to read, and it may be an
    attempt's leader that its runner is about to reap; it is reaped here only
    when it was already a zombie at the previous sweep, which a leader never
    is for that long.
    """

    def __init__(self) -> None:
        self._zombies: set[int] = set()

    def sweep(
        self, active_tasks: Collection[str], parents: Collection[int] = ()
    ) -> int:
        """Sweep our own children and those of ``parents`` (such as a fork
        server, which reaps its children itself)."""
        me = os.getpid()
        found = 0
        zombies: set[int] = set()
        for pid in _children({me, *parents}):
            if _parent(pid) != me:
                task_id = _task_of(pid)
                if task_id is not None and task_id not in active_tasks:
                    found += self._kill(pid, task_id, reap=False)
                continue
            task_id = _task_of(pid)
            if task_id is None:
                if _is_zombie(pid):
                    zombies.add(pid)
                    if pid in self._zombies:
                        found += self._reap(pid, "(exited)")
                continue
            if task_id not in active_tasks:
                found += self._kill(pid, task_id, reap=True)
        self._zombies = zombies
        return found

    def _kill(self, pid: int, task_id: str, reap: bool) -> int:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if reap:
            return self._reap(pid, task_id)
        log.warning(
            "escaped process of an ended attempt killed",
            extra={"action": "orphan_killed", "pid": pid, "task_id": task_id},
        )
        return 1

    def _reap(self, pid: int, task_id: str) -> int:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        log.warning(
            "escaped process of an ended attempt killed",
            extra={"action": "orphan_killed", "pid": pid, "task_id": task_id},
        )
        return 1


def kill_marked(task_ids: Collection[str]) -> int:
    """Kill every process on the host that belongs to one of ``task_ids``
    (by the attempt's mark or working directory): what attempts of an engine
    that was killed outright left behind. Returns how many were killed."""
    killed = 0
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        task_id = _task_of(pid)
        if task_id is None or task_id not in task_ids:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
            log.warning(
                "process of a lost attempt killed",
                extra={"action": "orphan_killed", "pid": pid, "task_id": task_id},
            )
    return killed


def _children(parents: Collection[int]) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _parent(int(entry.name)) in parents:
            out.append(int(entry.name))
    return out


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def _stat_fields(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return []
    # The command name may hold spaces or parentheses; fields follow the last ')'.
    return stat[stat.rfind(b")") + 2 :].split()


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == b"Z"


def _task_of(pid: int) -> str | None:
    """The task a process belongs to: from the environment it was started
    with, or else from its working directory (an attempt's is named
    ``<task id>-<attempt>``). A child forked by the fork server never exec'd,
    so its recorded environment is the server's; the directory tells then."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(_MARK):
            task_id = item[len(_MARK) :].decode(errors="replace")
            # The fork server's own blank mark names no attempt.
            return None if task_id.strip("-") == "" else task_id
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    match = _WORKDIR.match(os.path.basename(cwd.removesuffix(" (deleted)")))
    return match.group(1) if match else None
