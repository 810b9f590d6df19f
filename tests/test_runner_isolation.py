"""Hostile and broken services, run through the whole engine.

Each test submits to a serving engine, waits for the end, checks the final
state and error, checks that no process of the task is left (allowing the
orphan sweep its time), and checks that the engine still runs an ordinary
task afterwards. The tests whose behaviour depends on how attempt processes
start run under both launchers (the fork server and a cold interpreter).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.states import TaskState

GIB = 1024**3

LAUNCHERS = ["fork_server", "cold"]


@pytest.fixture(params=LAUNCHERS)
def launcher(request) -> str:
    """Each way of starting attempt processes; a test may parametrize
    ``launcher`` itself to mark single cases."""
    return request.param


@pytest.fixture
def any_engine(launcher: str, make_engine) -> Engine:
    """A serving engine with ``launcher``; while a test uses it, it is also
    this module's ``engine`` (so ``run_task`` and the checks use it)."""
    return make_engine(execution={"launcher": launcher})


@pytest.fixture
def engine(request) -> Engine:
    """The serving engine of this module: ``any_engine`` when the test asks
    for it (both launchers), else the default one from conftest."""
    if "any_engine" in request.fixturenames:
        return request.getfixturevalue("any_engine")
    return request.getfixturevalue("make_engine")()


@pytest.fixture
def finish(check_engine_healthy, wait_no_task_processes):
    """``finish(task)``: no process of the task is left, and the engine
    still runs an ordinary task."""

    def check(task) -> None:
        wait_no_task_processes(task.id)
        check_engine_healthy()

    return check


def submit(engine: Engine, service: str, input=None):
    request = SubmitRequest(service=service, input={} if input is None else input)
    return engine.dispatcher.submit(request).task


def wait_for_state(engine: Engine, task_id: str, state: str, within: float) -> None:
    deadline = time.monotonic() + within
    while (current := engine.store.get_task(task_id).state) != state:
        assert current not in (TaskState.FAILED, TaskState.SUCCEEDED), current
        assert time.monotonic() < deadline, f"task {task_id} never became {state}"
        time.sleep(0.01)


# output


@pytest.mark.timeout(120)
def test_a_gigabyte_of_stdout_is_drained_counted_and_capped(
    engine: Engine, make_service, run_task, finish
) -> None:
    name = make_service(
        "firehose",
        """
        import os
        block = b"x" * (1024 * 1024)
        for _ in range(1024):
            os.write(1, block)
    """,
        timeout=90,
        retry_limit=0,
    )
    rss_before = psutil.Process().memory_info().rss
    task = run_task(name, timeout=100)
    assert task.state == TaskState.SUCCEEDED, task.error
    [attempt] = engine.store.attempts(task.id)
    cap = engine.config.execution.output_cap_bytes
    assert attempt.stdout_bytes == GIB
    kept, _, note = attempt.stdout.partition("\n[...")
    assert kept == "x" * cap
    assert note == f" {GIB - cap} more bytes not kept]"
    # drained, never buffered: the engine did not grow by anything near 1 GiB
    assert psutil.Process().memory_info().rss - rss_before < 256 * 1024**2
    finish(task)


INVALID_UTF8 = r"""
    import os
    os.write(1, b"out \xff\xfe\xc3( end\n")
    os.write(2, b"err \xed\xa0\x80 end\n")
    fd = int(os.environ["KOS_SEE_EVENTS_FD"])
    os.write(fd, b"\xff\xfe not json at all\n")
    os.write(fd, b'{"type": "log", "message": "bad \xc3\x28 byte"}\n')
    os.write(fd, b'{"type": "progress", "done": 1, "total": 2, "message": "p\xff"}\n')
    os.write(fd, b'{"type": "result", "value": {"text": "r\xe9sum\xe9"}}\n')
"""


@pytest.mark.timeout(60)
def test_invalid_utf8_on_stdout_and_the_event_channel_is_made_readable(
    engine: Engine, make_service, run_task, finish
) -> None:
    name = make_service("mojibake", INVALID_UTF8, timeout=20, retry_limit=0)
    task = run_task(name, timeout=20)
    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.result_value() == {"text": "r\ufffdsum\ufffd"}
    assert task.progress_message == "p\ufffd"
    [attempt] = engine.store.attempts(task.id)
    assert attempt.stdout.startswith("out \ufffd")
    assert attempt.stdout.endswith("( end\n")
    assert attempt.stderr.startswith("err \ufffd")
    logs = [e.data["message"] for e in engine.store.events(task.id) if e.kind == "log"]
    assert any(m.startswith("unreadable event line: \ufffd") for m in logs), logs
    assert "bad \ufffd( byte" in logs
    finish(task)


@pytest.mark.timeout(60)
def test_a_lone_surrogate_in_the_result_is_handled_by_the_channel(
    engine: Engine, make_service, run_task, finish
) -> None:
    name = make_service(
        "surrogate",
        r"""
        import os
        print("printed before the result", flush=True)
        fd = int(os.environ["KOS_SEE_EVENTS_FD"])
        os.write(fd, b'{"type": "result", "value": "a\\ud800b"}\n')
    """,
        timeout=20,
        retry_limit=0,
    )
    task = run_task(name, timeout=20)
    assert task.error_kind != "engine", task.error
    assert task.state in (TaskState.SUCCEEDED, TaskState.FAILED)
    [attempt] = engine.store.attempts(task.id)
    assert "printed before the result" in attempt.stdout
    finish(task)


# A lone surrogate in a progress message or an error message reaches the
# store as text that cannot be encoded, and the store's write fails with a
# non-engine error that the pool retries forever. That wedges the whole
# engine, so it runs in a child process here that is killed afterwards.
WEDGE_DRIVER = """
import json, os, sys, time
from pathlib import Path

from kos_see.config import validate_config
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.home import Home

home_dir, bad_folder, ok_folder = sys.argv[1:4]
home = Home(Path(home_dir))
home.init()
config = validate_config({"execution": {
    "kill_grace": 0.5, "heartbeat_seconds": 0.5, "lease_seconds": 2,
    "workdir_root": str(home.root / "work")}})
engine = Engine.open(home, config=config)
bad = engine.registry.add(Path(bad_folder))[0].name
ok = engine.registry.add(Path(ok_folder))[0].name
engine.serve()
tasks = {key: engine.dispatcher.submit(SubmitRequest(name, {})).task
         for key, name in (("bad", bad), ("ok", ok))}
deadline = time.monotonic() + 2
report = {}
for key, task in tasks.items():
    done = engine.wait(task.id, max(0.0, deadline - time.monotonic()))
    report[key] = {"id": task.id, "state": done.state.value,
                   "error_kind": done.error_kind}
print(json.dumps(report), flush=True)
os._exit(0)  # without closing: a wedged engine would not close
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "line",
    [
        r'{"type": "progress", "done": 1, "message": "\\ud800"}',
        r'{"type": "error", "message": "\\ud800", "retryable": false}',
    ],
    ids=["progress", "error"],
)
def test_a_lone_surrogate_in_an_event_does_not_wedge_the_engine(
    tmp_path: Path, make_service, task_processes, line: str
) -> None:
    bad = make_service.write(
        "wedge",
        f"""
        import os
        fd = int(os.environ["KOS_SEE_EVENTS_FD"])
        os.write(fd, b'{line}\\n')
        raise SystemExit(1)
    """,
        timeout=10,
        retry_limit=0,
    )
    ok = make_service.write(
        "after-wedge",
        "def run(inputs):\n    return 1\n",
        entrypoint="main.py:run",
        retry_limit=0,
    )
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WEDGE_DRIVER,
            str(tmp_path / "wedge-home"),
            str(bad),
            str(ok),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = driver.communicate(timeout=40)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    report = json.loads(out)
    assert report["bad"]["state"] == "failed", report
    assert report["ok"]["state"] == "succeeded", report
    assert not task_processes(report["bad"]["id"])


# timeouts and signals


@pytest.mark.timeout(60)
def test_a_service_that_ignores_sigterm_is_killed_after_its_timeout(
    engine: Engine, make_service, run_task, finish
) -> None:
    timeout, grace = 1.0, engine.config.execution.kill_grace
    name = make_service(
        "stubborn",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
    """,
        timeout=timeout,
        retry_limit=0,
    )
    started = time.monotonic()
    task = run_task(name, timeout=20)
    elapsed = time.monotonic() - started
    assert task.state == TaskState.TIMED_OUT, (task.error_kind, task.error)
    assert task.error_kind == "timeout"
    assert "timeout of 1s" in task.error
    [attempt] = engine.store.attempts(task.id)
    assert attempt.signal == signal.SIGKILL  # TERM was ignored
    assert attempt.outcome == "timed_out"
    ran = attempt.ended_at - attempt.started_at
    assert timeout <= ran < timeout + grace + 1.0
    assert elapsed < timeout + grace + 3.0
    finish(task)


@pytest.mark.timeout(60)
def test_a_service_that_obeys_sigterm_times_out(
    any_engine: Engine, make_service, run_task, finish
) -> None:
    name = make_service(
        "slow",
        """
        import time
        time.sleep(60)
    """,
        timeout=0.5,
        retry_limit=0,
    )
    task = run_task(name, timeout=20)
    assert task.state == TaskState.TIMED_OUT, (task.error_kind, task.error)
    assert task.error_kind == "timeout"
    [attempt] = any_engine.store.attempts(task.id)
    assert attempt.signal == signal.SIGTERM
    assert 0.5 <= attempt.ended_at - attempt.started_at < 1.5
    finish(task)


@pytest.mark.timeout(60)
def test_a_service_killed_by_a_signal_fails_with_that_signal(
    any_engine: Engine, make_service, run_task, finish
) -> None:
    engine = any_engine
    name = make_service(
        "segfault",
        """
        import os, signal
        os.kill(os.getpid(), signal.SIGSEGV)
    """,
        timeout=20,
        retry_limit=0,
    )
    task = run_task(name, timeout=20)
    assert task.state == TaskState.FAILED
    assert task.error_kind == "signal"
    assert "SIGSEGV (11)" in task.error
    [attempt] = engine.store.attempts(task.id)
    assert attempt.signal == 11
    assert attempt.exit_code is None
    finish(task)


@pytest.mark.timeout(60)
def test_cancelling_a_running_task_stops_it_quickly(
    any_engine: Engine, make_service, finish, task_processes
) -> None:
    engine = any_engine
    name = make_service(
        "sleeper",
        """
        import time
        time.sleep(60)
    """,
        timeout=30,
        retry_limit=2,
    )
    task = submit(engine, name)
    wait_for_state(engine, task.id, TaskState.RUNNING, within=10)
    # the leftover check in finish() can see this task's processes at all
    assert len(task_processes(task.id)) == 1
    asked = time.monotonic()
    engine.dispatcher.cancel(task.id)
    done = engine.wait(task.id, timeout=10)
    took = time.monotonic() - asked
    assert done.state == TaskState.CANCELLED
    assert done.error_kind == "cancelled"
    assert took < 2.0
    [attempt] = engine.store.attempts(task.id)  # cancelled: never retried
    assert attempt.outcome == "cancelled"
    assert attempt.signal == signal.SIGTERM
    finish(done)


# processes that try to outlive their attempt


GRANDCHILD = """
    import os, time

    def run(inputs):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            if inputs["setsid"]:
                os.setsid()
                # Leave the working directory too: only the environment mark
                # still ties this process to its attempt.
                os.chdir("/")
            os.write(ready_w, b"x")  # only now may the attempt end
            os.close(ready_w)
            time.sleep(60)
            os._exit(0)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"x"
        return {"grandchild": pid, "own_group": os.getpgid(pid) != os.getpgid(0)}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("launcher", "setsid"),
    [
        ("cold", False),
        ("cold", True),
        ("fork_server", False),
        ("fork_server", True),
    ],
    ids=[
        "cold-same-group",
        "cold-setsid",
        "fork_server-same-group",
        "fork_server-setsid",
    ],
)
def test_a_grandchild_does_not_outlive_its_attempt(
    any_engine: Engine,
    make_service,
    run_task,
    finish,
    pid_alive,
    wait_until,
    setsid: bool,
) -> None:
    name = make_service(
        "forker", GRANDCHILD, entrypoint="main.py:run", timeout=20, retry_limit=0
    )
    task = run_task(name, {"setsid": setsid}, timeout=20)
    assert task.state == TaskState.SUCCEEDED, task.error
    grandchild = task.result_value()["grandchild"]
    assert task.result_value()["own_group"] is setsid
    try:
        assert wait_until(lambda: not pid_alive(grandchild), within=2.5), (
            f"grandchild {grandchild} of task {task.id} still alive"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)
    finish(task)


# the environment of an attempt


@pytest.mark.timeout(60)
def test_the_environment_is_scrubbed(
    any_engine: Engine, make_service, run_task, finish, monkeypatch
) -> None:
    monkeypatch.setenv("KOS_SEE_TEST_SECRET", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    name = make_service(
        "env",
        """
        import os

        def run(inputs):
            return dict(os.environ)
    """,
        entrypoint="main.py:run",
        timeout=20,
        retry_limit=0,
    )
    task = run_task(name, timeout=20)
    assert task.state == TaskState.SUCCEEDED, task.error
    env = task.result_value()
    assert env["KOS_SEE_TASK_ID"] == task.id  # the service did report its env
    assert "KOS_SEE_TEST_SECRET" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "hunter2" not in json.dumps(env)
    allowed = set(any_engine.config.security.env_allowlist) | {
        "HOME",
        "TMPDIR",
        "PYTHONDONTWRITEBYTECODE",
        "KOS_SEE_TASK_ID",
        "KOS_SEE_ATTEMPT",
        "KOS_SEE_WORKDIR",
        "KOS_SEE_INPUT",
        "KOS_SEE_EVENTS_FD",
    }
    assert set(env) <= allowed, set(env) - allowed
    finish(task)


@pytest.mark.timeout(60)
def test_the_working_directory_is_private_and_removed(
    any_engine: Engine, make_service, run_task, finish
) -> None:
    name = make_service(
        "workdir",
        """
        import os, stat

        def run(inputs):
            here = os.getcwd()
            with open("left-behind.bin", "wb") as handle:
                handle.write(b"x" * 1000)
            os.mkdir("sub")
            with open("sub/file", "w") as handle:
                handle.write("y")
            os.chmod("sub", 0o500)
            return {
                "cwd": here,
                "workdir": os.environ["KOS_SEE_WORKDIR"],
                "mode": stat.S_IMODE(os.stat(here).st_mode),
                "tmp": os.environ["TMPDIR"],
                "tmp_mode": stat.S_IMODE(os.stat(os.environ["TMPDIR"]).st_mode),
                "home": os.environ["HOME"],
                "input": open("input.json").read(),
            }
    """,
        entrypoint="main.py:run",
        timeout=20,
        retry_limit=0,
    )
    task = run_task(name, {"q": 1}, timeout=20)
    assert task.state == TaskState.SUCCEEDED, task.error
    seen = task.result_value()
    cwd = Path(seen["cwd"])
    assert cwd == Path(seen["workdir"]) == Path(seen["home"])
    assert cwd.is_relative_to(any_engine.home.workdir_root(any_engine.config))
    assert task.id in cwd.name
    assert seen["mode"] == 0o700
    assert Path(seen["tmp"]).parent == cwd
    assert seen["tmp_mode"] == 0o700
    assert json.loads(seen["input"]) == {"q": 1}
    assert not cwd.exists()
    finish(task)


# retries


FLAKY = """
    def run(inputs):
        raise RuntimeError("flaky failure")
"""


@pytest.mark.timeout(60)
def test_a_retryable_failure_is_retried_then_dead(
    engine: Engine, make_service, run_task, finish
) -> None:
    name = make_service(
        "flaky", FLAKY, entrypoint="main.py:run", timeout=20, retry_limit=2
    )
    task = run_task(name, timeout=20)
    assert task.state == TaskState.DEAD
    assert task.attempts == 3
    assert "RuntimeError: flaky failure" in task.error
    assert "all 3 attempts used" in task.error
    attempts = engine.store.attempts(task.id)
    assert [a.number for a in attempts] == [1, 2, 3]
    assert [a.outcome for a in attempts] == ["failed"] * 3
    assert all("flaky failure" in (a.stderr or "") for a in attempts)
    states = [
        e.data["state"] for e in engine.store.events(task.id) if e.kind == "state"
    ]
    assert states.count("queued") == 3  # the first, and two retries
    assert states[-1] == "dead"
    finish(task)


@pytest.mark.timeout(60)
def test_without_retries_a_retryable_failure_is_failed(
    engine: Engine, make_service, run_task, finish
) -> None:
    name = make_service(
        "once", FLAKY, entrypoint="main.py:run", timeout=20, retry_limit=0
    )
    task = run_task(name, timeout=20)
    assert task.state == TaskState.FAILED
    assert task.attempts == 1
    assert task.error == "RuntimeError: flaky failure"
    assert len(engine.store.attempts(task.id)) == 1
    finish(task)


# the fork server itself


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", ["fork_server"])
def test_the_engine_recovers_when_its_fork_server_dies(
    any_engine: Engine,
    make_service,
    run_task,
    finish,
    wait_until,
    pid_alive,
) -> None:
    engine = any_engine
    name = make_service(
        "quick",
        "def run(inputs):\n    return inputs\n",
        entrypoint="main.py:run",
        retry_limit=0,
    )
    assert run_task(name, {"n": 1}).state == TaskState.SUCCEEDED
    launcher = engine.pool.runner.launcher
    server = launcher.server_pid
    assert server is not None
    os.kill(server, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(server), within=5)
    task = run_task(name, {"n": 2})
    assert task.state == TaskState.SUCCEEDED, task.error
    assert task.result_value() == {"n": 2}
    assert launcher.server_pid not in (None, server)
    finish(task)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", ["fork_server"])
def test_the_socket_of_a_dead_fork_server_is_closed(
    any_engine: Engine, make_service, run_task, wait_until
) -> None:
    # A dead server's socket is closed, not left to the garbage collector
    # (a ResourceWarning); the next attempt starts a new server.
    engine = any_engine
    name = make_service(
        "quick",
        "def run(inputs):\n    return 1\n",
        entrypoint="main.py:run",
        retry_limit=0,
    )
    assert run_task(name).state == TaskState.SUCCEEDED
    launcher = engine.pool.runner.launcher
    sock = launcher._sock  # the launcher's end of the server's socket
    assert sock is not None and sock.fileno() >= 0
    os.kill(launcher.server_pid, signal.SIGKILL)
    assert wait_until(lambda: launcher._sock is not sock, within=5)
    assert run_task(name).state == TaskState.SUCCEEDED
    assert sock.fileno() == -1, "the dead server's socket was left open"


def test_a_new_engine_clears_working_directories_a_killed_one_left(
    make_engine, home, engine_config
) -> None:
    root = home.workdir_root(engine_config)
    leftover = root / "0123456789abcdef01234567-1"
    leftover.mkdir(parents=True)
    (leftover / "input.json").write_text("{}")
    make_engine(serve=True)
    assert not leftover.exists()
