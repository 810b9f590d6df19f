"""Control groups for attempts: a memory and a process ceiling for the whole
attempt, its children included, where the host lets the engine make them.

Rlimits bound each process on its own; a cgroup bounds the attempt as a
whole: a fork bomb stops at ``limits.processes`` tasks (the kernel does not
apply ``RLIMIT_NPROC`` to root), and memory over ``limits.memory_mb`` gets
the attempt killed by the kernel, which the runner reports as killed for
memory. Both hierarchies are supported: cgroup v2 (one unified tree,
``memory.max``, ``pids.max``, ``memory.events``) and v1 (a ``memory`` and a
``pids`` tree, ``memory.limit_in_bytes``, ``pids.max``,
``memory.oom_control``). Each attempt's group is made under the engine's own
group and removed after the attempt.

An attempt joins its group itself, before any service code runs (the
bootstrap writes its pid into the groups' ``cgroup.procs``; the sandbox's
wrapper shell does it before it starts bubblewrap), so nothing it starts can
escape the limit by forking early.

Known shortcoming: on cgroup v2 the engine needs a delegated subtree (its own
group must allow ``+memory +pids`` in ``cgroup.subtree_control``, which a
group with processes in it cannot); where it cannot enable them, attempts run
with rlimits only, and the engine logs so once.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
GROUP = "kos-see"
MIB = 1024 * 1024


@dataclass
class AttemptGroup:
    """One attempt's groups: one directory per hierarchy (v1) or one (v2)."""

    version: int
    dirs: list[Path]
    memory_dir: Path | None

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        if self.memory_dir is None:
            return False
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _counter(self.memory_dir / name, "oom_kill") > 0

    def peak_memory_kb(self) -> int | None:
        if self.memory_dir is None:
            return None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.memory_dir / name).read_text()) // 1024
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        # A group can go only once empty; the runner killed the attempt's
        # processes already, but their exit may take a moment to show.
        for folder in self.dirs:
            deadline = time.monotonic() + 2.0
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        log.warning(
                            "attempt cgroup not removed",
                            extra={"action": "cgroup_leftover", "path": str(folder)},
                        )
                        break
                    time.sleep(0.01)


class Cgroups:
    """The parent groups this engine makes attempts' groups in."""

    def __init__(self, version: int, parents: dict[str, Path]) -> None:
        self.version = version
        self.parents = parents  # controller ("memory", "pids", or "" for v2) -> dir

    @classmethod
    def detect(cls, root: Path = ROOT) -> Cgroups | None:
        """The host's cgroups if this process may make groups, else None."""
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        own = dict(_membership(line) for line in lines if line.count(":") >= 2)
        if (root / "memory").is_dir() or (root / "pids").is_dir():
            found = cls._v1(root, own)
        elif (root / "cgroup.controllers").is_file():
            found = cls._v2(root, own.get("", "/"))
        else:
            found = None
        if found is None:
            log.info(
                "no usable cgroups; attempts get rlimits only",
                extra={"action": "cgroups_unavailable"},
            )
        return found

    @classmethod
    def _v1(cls, root: Path, own: dict[str, str]) -> Cgroups | None:
        parents: dict[str, Path] = {}
        for controller in ("memory", "pids"):
            mount = root / controller
            if not mount.is_dir():
                continue
            parent = mount / own.get(controller, "/").lstrip("/") / GROUP
            if _makable(parent):
                parents[controller] = parent
        return cls(1, parents) if parents else None

    @classmethod
    def _v2(cls, root: Path, own: str) -> Cgroups | None:
        parent = root / own.lstrip("/") / GROUP
        if not _makable(parent):
            return None
        try:
            (parent / "cgroup.subtree_control").write_text("+memory +pids")
        except OSError:
            return None
        return cls(2, {"": parent})

    def create(
        self, name: str, memory_mb: int | None, processes: int | None
    ) -> AttemptGroup | None:
        """A group for one attempt with the given ceilings; None if the host
        refused (the attempt then runs with rlimits only)."""
        dirs: list[Path] = []
        memory_dir = None
        try:
            for controller, parent in self.parents.items():
                folder = parent / name
                folder.mkdir(exist_ok=True)
                dirs.append(folder)
                if controller in ("memory", "") and memory_mb:
                    self._memory(folder, memory_mb)
                if controller in ("memory", ""):
                    memory_dir = folder
                if controller in ("pids", "") and processes:
                    (folder / "pids.max").write_text(str(processes))
        except OSError as exc:
            log.warning(
                "attempt cgroup not made; rlimits only",
                extra={"action": "cgroup_failed", "error": str(exc)},
            )
            AttemptGroup(self.version, dirs, None).remove()
            return None
        return AttemptGroup(self.version, dirs, memory_dir)

    def _memory(self, folder: Path, memory_mb: int) -> None:
        amount = str(memory_mb * MIB)
        if self.version == 2:
            (folder / "memory.max").write_text(amount)
            (folder / "memory.swap.max").write_text("0")
            # An out-of-memory kill takes the whole attempt, not one process.
            (folder / "memory.oom.group").write_text("1")
            return
        (folder / "memory.limit_in_bytes").write_text(amount)
        try:
            # Without swap accounting the limit alone holds; with it, swap
            # must not extend the attempt's memory.
            (folder / "memory.memsw.limit_in_bytes").write_text(amount)
        except OSError:
            pass


def _membership(line: str) -> tuple[str, str]:
    _id, controllers, path = line.split(":", 2)
    # v1 lines name their controllers ("4:memory:/x", "3:cpu,cpuacct:/y");
    # the v2 line has none ("0::/z").
    for controller in controllers.split(","):
        if controller in ("memory", "pids"):
            return controller, path
    return controllers, path


def _makable(parent: Path) -> bool:
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError:
        return False
    return True


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
