"""Starting an attempt's process. The runner does not care how.

``ColdLauncher`` starts a fresh interpreter on ``bootstrap.py`` for every
attempt. A launcher that forks from a pre-started, pre-imported interpreter
can replace it: it gets the same spec and file descriptors and hands back the
same ``Launched`` handle, so the attempt protocol does not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")


@dataclass
class Exit:
    exit_code: int | None
    signal: int | None
    cpu_seconds: float
    peak_rss_kb: int


class Launched(Protocol):
    pid: int  # also the process group id: every attempt leads its own group

    def wait_fd(self) -> int:
        """A descriptor that becomes readable when the process has exited."""

    def reap(self) -> Exit:
        """Collect the exited process; only after ``wait_fd`` was readable."""

    def close(self) -> None: ...


class Launcher(Protocol):
    def launch(
        self, spec: dict[str, Any], env: dict[str, str], fds: dict[str, int]
    ) -> Launched: ...


class _ColdProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)

    def wait_fd(self) -> int:
        return self._pidfd

    def reap(self) -> Exit:
        _pid, status, usage = os.wait4(self.pid, 0)
        # Tell Popen the child is gone so that it does not wait or warn.
        self._popen.returncode = os.waitstatus_to_exitcode(status)
        return exit_from_status(status, usage)

    def close(self) -> None:
        os.close(self._pidfd)


class ColdLauncher:
    """A new interpreter per attempt: simplest, and about 30 ms each."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def launch(
        self, spec: dict[str, Any], env: dict[str, str], fds: dict[str, int]
    ) -> Launched:
        popen = subprocess.Popen(
            [self.python, "-I", str(BOOTSTRAP), json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=fds["stdout"],
            stderr=fds["stderr"],
            pass_fds=(fds["events"],),
            env=env,
            cwd=spec["workdir"],
            start_new_session=True,
        )
        return _ColdProcess(popen)


def exit_from_status(status: int, usage: Any) -> Exit:
    code = sig = None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
    else:
        code = os.WEXITSTATUS(status)
    return Exit(
        exit_code=code,
        signal=sig,
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 6),
        peak_rss_kb=int(usage.ru_maxrss),
    )
