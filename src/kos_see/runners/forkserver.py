"""The fork server: a pre-started interpreter that forks one child per attempt.

A cold interpreter costs tens of milliseconds before the service's first
line; a fork of this warmed, single-threaded process costs well under one.
The worker sends a launch request (the attempt's spec and environment, with
its stdout, stderr and event channel as file descriptors) over a Unix
SEQPACKET socket; the server forks, the child sets itself up exactly as a
cold attempt would (own session, scrubbed environment, private working
directory, limits) and runs the service through ``bootstrap.run``. The server
never runs service code itself, so every child starts from the same clean
state. It reports each child's pid, and later its exit status and resource
usage, back on the same socket.

Run as ``python -I forkserver.py FD`` with FD the server's end of the socket.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import sys

# Imported here so that children do not pay for them.
import traceback  # noqa: F401


def _load_bootstrap():  # type: ignore[no-untyped-def]
    # By path, so that this folder never lands on the children's sys.path.
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap.py")
    spec = importlib.util.spec_from_file_location("kos_see_bootstrap", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bootstrap = _load_bootstrap()
_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_void_p

try:  # the service helper, warmed for the common case
    import kos_see.service  # noqa: F401
except ImportError:
    pass

MAX_MESSAGE = 1 << 20
CHILD_EVENTS_FD = 3


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    bootstrap.bind_to_parent(int(sys.argv[2]))
    # Ctrl-C reaches the whole foreground group; the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _become_subreaper()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # Objects that exist now are never collected in the children, so the
    # collector does not touch (and copy) their pages after each fork.
    gc.freeze()
    leaders: set[int] = set()
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fd == wake_r:
                    _drain(wake_r)
                    _reap(sock, leaders)
                elif not _serve_one(sock, leaders):
                    return


def _serve_one(sock: socket.socket, leaders: set[int]) -> bool:
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 3)
    except ConnectionResetError:
        return False
    if not data:
        return False  # the worker closed its end: it is gone or done
    request = json.loads(data)
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"id": request["id"], "error": str(exc)}).encode())
        return True
    if pid == 0:
        _child(request, fds, parent)
    for fd in fds:
        os.close(fd)
    leaders.add(pid)
    # A pidfd taken before this loop can reap the child stays valid after: the
    # worker waits on it even if the attempt has already ended.
    pidfd = os.pidfd_open(pid)
    try:
        socket.send_fds(
            sock, [json.dumps({"id": request["id"], "pid": pid}).encode()], [pidfd]
        )
    finally:
        os.close(pidfd)
    return True


def _child(request: dict[str, object], fds: list[int], parent: int) -> None:
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        stdout, stderr, events = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.dup2(events, CHILD_EVENTS_FD)
        # Nothing of the server's (its socket, other attempts' pipes) stays open.
        os.closerange(CHILD_EVENTS_FD + 1, _max_fd())
        spec = request["spec"]
        assert isinstance(spec, dict)
        os.chdir(str(spec["workdir"]))
        env = request["env"]
        assert isinstance(env, dict)
        _mark_task(str(env.get("KOS_SEE_TASK_ID", "")))
        os.environ.clear()
        os.environ.update(env)
        os.environ["KOS_SEE_EVENTS_FD"] = str(CHILD_EVENTS_FD)
        bootstrap.bind_to_parent(parent)
        bootstrap.join_cgroups(spec.get("cgroup_procs"))
        bootstrap.apply_limits(spec.get("limits") or {})
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        code = bootstrap.run(spec)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # a failure before the service ran: say so, exit
        import traceback

        traceback.print_exc()
        code = 70
    os._exit(code)


def _mark_task(task_id: str) -> None:
    """Write the task id over the blank one in this process's original
    environment block, which is what /proc/<pid>/environ shows, for this
    child and for whatever it forks."""
    address = _libc.getenv(b"KOS_SEE_TASK_ID")
    blank = len(os.environ.get("KOS_SEE_TASK_ID", ""))
    if not address or len(task_id) != blank:
        return
    ctypes.memmove(address, task_id.encode(), blank)


def _reap(sock: socket.socket, leaders: set[int]) -> None:
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if exited is None:
            return
        pid = exited.si_pid
        if pid in leaders:
            # While the leader is unreaped its pid cannot be reused, so this
            # kills only what is left of its own group.
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _pid, status, usage = os.wait4(pid, 0)
        if pid not in leaders:
            continue  # an escaped grandchild, re-parented here and now reaped
        leaders.discard(pid)
        report = {
            "exit": pid,
            "status": status,
            "utime": usage.ru_utime,
            "stime": usage.ru_stime,
            "maxrss": usage.ru_maxrss,
        }
        sock.send(json.dumps(report).encode())


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 65536


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    main()
