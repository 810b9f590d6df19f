"""Starting an attempt's process. The runner does not care how.

``ColdLauncher`` starts a fresh interpreter on ``bootstrap.py`` for every
attempt. A launcher that forks from a pre-started, pre-imported interpreter
can replace it: it gets the same spec and file descriptors and hands back the
same ``Launched`` handle, so the attempt protocol does not change.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
FORK_SERVER = Path(__file__).with_name("forkserver.py")


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


def make_launcher(kind: str) -> Launcher:
    return ForkServerLauncher() if kind == "fork_server" else ColdLauncher()


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


# The fork server's environment holds this blank task id; each child writes
# its own task id over it in place, so that /proc/<pid>/environ of the child
# and of anything it forks names the attempt (see reaper.py).
TASK_ID_MARK = "KOS_SEE_TASK_ID"
BLANK_TASK_ID = "-" * 24


def fork_server_env() -> dict[str, str]:
    # Each child replaces its environment; a small one is cheaper to clear.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")}
    env[TASK_ID_MARK] = BLANK_TASK_ID
    return env


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


class _ForkedProcess:
    def __init__(self, server: ForkServerLauncher, pid: int, pidfd: int) -> None:
        self._server = server
        self.pid = pid
        self._pidfd = pidfd

    def wait_fd(self) -> int:
        return self._pidfd

    def reap(self) -> Exit:
        return self._server.exit_of(self.pid)

    def close(self) -> None:
        os.close(self._pidfd)


class ForkServerLauncher:
    """Forks each attempt from a pre-started interpreter (see ``forkserver.py``).

    The server starts on first use and again if it died. Requests from slot
    threads are serialised on one socket; a reader thread routes the server's
    replies (the child's pid) and exit reports to the waiting threads.
    """

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, Exit] = {}
        self._changed = threading.Condition()

    @property
    def server_pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def launch(
        self, spec: dict[str, Any], env: dict[str, str], fds: dict[str, int]
    ) -> Launched:
        message = json.dumps({"spec": spec, "env": env})
        with self._lock:
            sock = self._ensure_server()
            self._next_id += 1
            request_id = self._next_id
            payload = message[:-1] + f',"id":{request_id}}}'
            try:
                socket.send_fds(
                    sock,
                    [payload.encode()],
                    [fds["stdout"], fds["stderr"], fds["events"]],
                )
            except OSError:
                # The server is gone; the next launch starts a new one.
                self._sock = None
                sock.close()
                raise
        reply = self._await(lambda: self._replies.pop(request_id, None))
        if "error" in reply:
            raise OSError(f"fork server could not fork: {reply['error']}")
        return _ForkedProcess(self, int(reply["pid"]), int(reply["pidfd"]))

    def exit_of(self, pid: int) -> Exit:
        return self._await(lambda: self._exits.pop(pid, None))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                # Shutting the socket down ends the server's loop and the reader,
                # which closes it.
                self._sock.shutdown(socket.SHUT_RDWR)
                self._sock = None
            if self._process is not None:
                self._process.wait(timeout=5)
                self._process = None

    def _await(self, take):  # type: ignore[no-untyped-def]
        with self._changed:
            while True:
                value = take()
                if value is not None:
                    return value
                if self._sock is None:
                    raise OSError("fork server stopped before it answered")
                self._changed.wait(1.0)

    def _ensure_server(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        # The server dies with the thread that started it (PR_SET_PDEATHSIG
        # follows the parent thread), so a thread of its own starts it and
        # lives as long as the launcher, not whichever slot came first.
        started: queue.SimpleQueue[socket.socket | BaseException] = queue.SimpleQueue()
        keeper = threading.Thread(
            target=self._keep, args=(started,), name="fork-server-keeper", daemon=True
        )
        keeper.start()
        result = started.get()
        if isinstance(result, BaseException):
            raise result
        self._sock = result
        reader = threading.Thread(
            target=self._read, args=(result,), name="fork-server-reader", daemon=True
        )
        reader.start()
        return result

    def _keep(self, started: queue.SimpleQueue[socket.socket | BaseException]) -> None:
        try:
            sock = self._start_server()
        except BaseException as exc:
            started.put(exc)
            return
        started.put(sock)
        process = self._process
        assert process is not None
        process.wait()

    def _start_server(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._process = subprocess.Popen(
            [
                self.python,
                "-I",
                str(FORK_SERVER),
                str(theirs.fileno()),
                str(os.getpid()),
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=fork_server_env(),
        )
        theirs.close()
        return mine

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                with self._changed:
                    if self._sock is sock:
                        self._sock = None
                    self._changed.notify_all()
                sock.close()
                return
            message = json.loads(data)
            with self._changed:
                if "exit" in message:
                    self._exits[message["exit"]] = _exit_from_report(message)
                else:
                    if fds:
                        message["pidfd"] = fds[0]
                    self._replies[message["id"]] = message
                self._changed.notify_all()


def _exit_from_report(report: dict[str, Any]) -> Exit:
    status = int(report["status"])
    usage = _Usage(report["utime"], report["stime"], report["maxrss"])
    return exit_from_status(status, usage)


@dataclass
class _Usage:
    ru_utime: float
    ru_stime: float
    ru_maxrss: int
