"""The sandbox runner: the local runner's protocol under bubblewrap.

Each attempt runs in new namespaces (``--unshare-all``: no network but a
loopback that is down, its own process tree, IPC and host name), with no
capabilities, in a new session, and dies with its worker
(``--die-with-parent``). Its file system is the host's system folders and
the Python it runs on, read-only; the service's folder, read-only; a private
``/tmp``, ``/dev`` and ``/proc``; and its working directory, the only place
it can write that outlives nothing. The engine's home (database, keys,
secrets) is never mounted, and is covered by an empty folder should it lie
under a mounted one. A new interpreter starts per attempt (a fork server
cannot fork into a sandbox), which is the sandbox's main cost.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import kos_see
from kos_see.runners.base import (
    AttemptControl,
    AttemptOutcome,
    AttemptSpec,
    OnEvents,
    OnStarted,
)
from kos_see.runners.cgroups import Cgroups
from kos_see.runners.launch import BOOTSTRAP, Launched, _ColdProcess
from kos_see.runners.local import LocalPythonRunner

SYSTEM = ("/usr", "/etc", "/opt")
SYSTEM_LINKS = ("/bin", "/lib", "/lib64", "/sbin", "/lib32")
# In the attempt's process namespace, its bootstrap's parent is bubblewrap's
# init, pid 1; the bootstrap checks that it still has that parent.
SANDBOX_PARENT = 1


class SandboxLauncher:
    def __init__(
        self, hidden: list[Path], bwrap: str | None = None, python: str | None = None
    ) -> None:
        self.hidden = hidden
        self.bwrap = bwrap or shutil.which("bwrap")
        self.python = python or sys.executable

    def launch(
        self, spec: dict[str, Any], env: dict[str, str], fds: dict[str, int]
    ) -> Launched:
        if self.bwrap is None:
            raise OSError(
                "the sandbox runner needs bubblewrap, which is not installed "
                "(apt-get install bubblewrap)"
            )
        procs = spec.pop("cgroup_procs", None) or []
        inner = {**spec, "parent_pid": SANDBOX_PARENT}
        argv = [*self.command(inner), self.python, "-I", str(BOOTSTRAP)]
        argv.append(json.dumps(inner))
        popen = subprocess.Popen(
            join_cgroups_first(procs, argv),
            stdin=subprocess.DEVNULL,
            stdout=fds["stdout"],
            stderr=fds["stderr"],
            pass_fds=(fds["events"],),
            env=env,
            cwd=spec["workdir"],
            start_new_session=True,
        )
        return _ColdProcess(popen)

    def command(self, spec: dict[str, Any]) -> list[str]:
        assert self.bwrap is not None
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
        args += ["--cap-drop", "ALL", "--hostname", "sandbox"]
        mounted: list[Path] = []
        for folder in SYSTEM:
            if Path(folder).is_dir():
                args += ["--ro-bind", folder, folder]
                mounted.append(Path(folder))
        for link in SYSTEM_LINKS:
            path = Path(link)
            if path.is_symlink():
                args += ["--symlink", str(path.readlink()), link]
            elif path.is_dir():
                args += ["--ro-bind", link, link]
                mounted.append(path)
        # Mounts stack in order: the private /tmp and /dev first, so that the
        # folders bound after them (which may lie in /tmp) show through.
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for folder in python_folders(self.python):
            if not any(folder.is_relative_to(m) for m in mounted):
                args += ["--ro-bind", str(folder), str(folder)]
                mounted.append(folder)
        for secret_place in self.hidden:
            if any(secret_place.is_relative_to(m) for m in mounted):
                args += ["--tmpfs", str(secret_place)]
        # The service's folder after the home is hidden: it may lie inside.
        service = str(Path(spec["service_dir"]).resolve())
        args += ["--ro-bind", service, service]
        workdir = spec["workdir"]
        args += ["--bind", workdir, workdir, "--chdir", workdir]
        # The root itself is bubblewrap's tmpfs: read-only too, so that only
        # the working directory (and the private /tmp) can be written.
        args += ["--remount-ro", "/", "--"]
        return args


def python_folders(python: str) -> list[Path]:
    """What the attempt's interpreter needs to read: its installation, the
    virtual environment it runs in, the engine's package."""
    folders = [
        Path(sys.base_prefix).resolve(),
        Path(sys.prefix).absolute(),
        Path(python).resolve().parent.parent,
        Path(kos_see.__file__).resolve().parent.parent,
    ]
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique and folder != Path("/"):
            unique.append(folder)
    return unique


def join_cgroups_first(procs: list[str], argv: list[str]) -> list[str]:
    """``argv`` started by a shell that first moves itself into the attempt's
    cgroups, so that bubblewrap and everything under it start inside them."""
    if not procs:
        return argv
    joins = " && ".join(f"echo $$ > {shlex.quote(p)}" for p in procs)
    return ["/bin/sh", "-c", f'{joins} && exec "$0" "$@"', *argv]


class SandboxRunner(LocalPythonRunner):
    name = "sandbox"

    def __init__(
        self,
        hidden: list[Path],
        secrets_dir: Path | None = None,
        cgroups: Cgroups | None = None,
        bwrap: str | None = None,
    ) -> None:
        super().__init__(
            SandboxLauncher(hidden, bwrap), secrets_dir=secrets_dir, cgroups=cgroups
        )

    def run(
        self,
        spec: AttemptSpec,
        control: AttemptControl,
        on_started: OnStarted,
        on_events: OnEvents,
    ) -> AttemptOutcome:
        # A sandbox is isolation whatever security.task_isolation says: the
        # engine's environment and unlimited resources stay outside.
        spec = replace(spec, isolate=True)
        outcome = super().run(spec, control, on_started, on_events)
        outcome.extra["isolation"] = "sandbox" + (
            f"+cgroup-v{self.cgroups.version}" if self.cgroups else ""
        )
        return outcome
