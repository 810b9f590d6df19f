"""The first code an attempt's process runs, before the service's own.

It is started as a script (``python -I bootstrap.py SPEC``) or called in a
forked child (``run(spec)``), so it imports only the standard library until
the service runs. It binds the process to its worker's life, applies the
resource limits, then runs the entrypoint: a script as ``__main__``, or a
function called with the inputs whose return value is the result.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import traceback
import types

PR_SET_PDEATHSIG = 1
_MIB = 1024 * 1024
_LIMITS = {
    "cpu_seconds": (resource.RLIMIT_CPU, 1),
    "memory_mb": (resource.RLIMIT_AS, _MIB),
    "open_files": (resource.RLIMIT_NOFILE, 1),
    "processes": (resource.RLIMIT_NPROC, 1),
    "file_size_mb": (resource.RLIMIT_FSIZE, _MIB),
}


_libc = None


def bind_to_parent(parent_pid: int) -> None:
    """Die with the worker: KILL arrives if the parent goes away first."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(137)


def join_cgroups(procs: object) -> None:
    """Enter the attempt's cgroups before any service code runs, so that its
    memory and process ceilings hold for everything it starts."""
    for path in procs if isinstance(procs, list) else []:
        try:
            with open(str(path), "w") as handle:
                handle.write(str(os.getpid()))
        except OSError as exc:
            # Running without the ceiling it was given is not an option.
            print(f"cannot join the attempt's cgroup {path}: {exc}", file=sys.stderr)
            os._exit(125)


def apply_limits(limits: dict[str, int | None]) -> None:
    for key, value in limits.items():
        if value is None:
            continue
        which, scale = _LIMITS[key]
        amount = value * scale
        if which == resource.RLIMIT_CPU:
            # The soft limit sends SIGXCPU; the hard one a second later KILL.
            resource.setrlimit(which, (amount, amount + 1))
        else:
            resource.setrlimit(which, (amount, amount))


def emit(record: dict[str, object]) -> None:
    fd = int(os.environ["KOS_SEE_EVENTS_FD"])
    data = (json.dumps(record, default=str) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def execute(path: str, name: str) -> dict[str, object]:
    """Run a file as module ``name`` and return its namespace.

    What ``runpy.run_path`` does for a plain file, without its importer
    machinery, which costs a forked child more than the service often does.
    """
    with open(path, "rb") as handle:
        code = compile(handle.read(), path, "exec", dont_inherit=True)
    module = types.ModuleType(name)
    module.__file__ = path
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    saved = sys.modules.get(name)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    finally:
        if saved is not None:
            sys.modules[name] = saved
    return module.__dict__


def run(spec: dict[str, object]) -> int:
    """Run the service described by ``spec``; returns the exit code."""
    service_dir = str(spec["service_dir"])
    entry_file = os.path.join(service_dir, str(spec["entry_file"]))
    function = spec.get("entry_function")
    sys.path.insert(0, service_dir)
    sys.argv = [entry_file]
    try:
        if function:
            namespace = execute(entry_file, "kos_see_service")
            call = namespace.get(str(function))
            if not callable(call):
                emit(
                    {
                        "type": "error",
                        "retryable": False,
                        "message": f"{spec['entry_file']} defines no function "
                        f"{function!r} (the manifest's entrypoint)",
                    }
                )
                return 1
            with open(os.environ["KOS_SEE_INPUT"], encoding="utf-8") as handle:
                value = call(json.load(handle))
            emit({"type": "result", "value": value})
        else:
            execute(entry_file, "__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException as exc:  # the service's error, reported, not ours
        retryable = bool(getattr(exc, "retryable", True))
        message = _describe(exc, spec)
        traceback.print_exc()
        emit({"type": "error", "message": message, "retryable": retryable})
        return 1
    return 0


def _describe(exc: BaseException, spec: dict[str, object]) -> str:
    if isinstance(exc, MemoryError):
        limits = spec.get("limits") or {}
        limit = limits.get("memory_mb") if isinstance(limits, dict) else None
        within = f" of {limit} MiB (limits.memory_mb)" if limit else ""
        return f"MemoryError: the attempt ran out of its address space{within}"
    return f"{type(exc).__name__}: {exc}"


def main() -> None:
    spec = json.loads(sys.argv[1])
    bind_to_parent(int(spec["parent_pid"]))
    join_cgroups(spec.get("cgroup_procs"))
    apply_limits(spec.get("limits") or {})
    code = run(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
