"""The sandbox runner: each way out, tried from inside a sandboxed task, fails.

Real bubblewrap, real processes, real sockets on loopback, real cgroups where
the host has them. One probe service tries one thing per task and reports
what happened; the tests assert that the attempt was contained and that the
engine carried on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.runners.cgroups import Cgroups
from kos_see.security.keys import load_or_create

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (apt-get install bubblewrap)",
)

PROBE = """
import errno, os, socket, time
from kos_see import service

data = service.inputs()
kind = data["probe"]


def attempt(action):
    try:
        action()
    except OSError as exc:
        return {"blocked": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"blocked": False, "error": None}


def read(path):
    with open(path, "rb") as handle:
        handle.read(1)


def write(path):
    with open(path, "w") as handle:
        handle.write("escaped")


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=3)
    sock.close()


if kind == "read":
    service.result([attempt(lambda p=p: read(p)) for p in data["paths"]])
elif kind == "write":
    service.result([attempt(lambda p=p: write(p)) for p in data["paths"]])
elif kind == "connect":
    service.result([attempt(lambda a=a: connect(*a)) for a in data["addresses"]])
elif kind == "look":
    write("in-workdir.txt")
    write("/tmp/private.txt")
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    service.result({
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
        "visible_pids": len(pids),
        "interfaces": [name for _i, name in socket.if_nameindex()],
        "hostname": socket.gethostname(),
        "secret": open(os.path.join(os.environ["KOS_SEE_SECRETS_DIR"], "token")).read()
        if os.environ.get("KOS_SEE_SECRETS_DIR") else None,
        "env_secret": any("tok3n" in v for v in os.environ.values()),
    })
elif kind == "forkbomb":
    children, error = 0, None
    try:
        while children < 1000:
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError as exc:
        error = str(exc)
    service.result({"children": children, "error": error})
elif kind == "memory":
    hoard = []
    for _ in range(256):
        hoard.append(bytearray(8 * 1024 * 1024))  # 8 MiB, touched
    service.result({"held_mb": 8 * len(hoard)})
elif kind == "memory-children":
    # Each child stays under the address-space rlimit; together they do not.
    for _ in range(4):
        if os.fork() == 0:
            hoard = [bytearray(8 * 1024 * 1024) for _ in range(10)]
            time.sleep(5)
            os._exit(0)
    statuses = [os.wait()[1] for _ in range(4)]
    raise SystemExit(1 if any(os.WIFSIGNALED(s) for s in statuses) else 0)
elif kind == "ignore-term":
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
"""


@pytest.fixture
def sandboxed(make_service) -> str:
    return make_service(
        "probe",
        PROBE,
        runner="sandbox",
        limits={"processes": 32, "memory_mb": 128},
        retry_limit=0,
        timeout=30,
        secrets=["token"],
    )


def run(engine: Engine, inputs: list[dict], service: str = "probe", timeout=60):
    tasks = [
        engine.dispatcher.submit(SubmitRequest(service=service, input=i)).task
        for i in inputs
    ]
    return [engine.wait(t.id, timeout) for t in tasks]


@pytest.fixture
def secret(home) -> None:
    home.secrets_dir.mkdir(mode=0o700, exist_ok=True)
    (home.secrets_dir / "token").write_text("tok3n")


def test_the_sandbox_cannot_read_write_or_connect_outside(
    engine: Engine, sandboxed: str, secret, home, tmp_path: Path
):
    load_or_create(home.engine_key_path)
    other = engine.home.workdir_root(engine.config) / "another-task-1"
    other.mkdir(parents=True, exist_ok=True)
    (other / "data.txt").write_text("not yours")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    service_dir = engine.registry.resolve("probe")[0].path
    try:
        reads, writes, connects, look = run(
            engine,
            [
                {
                    "probe": "read",
                    "paths": [
                        str(other / "data.txt"),
                        str(home.database_path),
                        str(home.engine_key_path),
                        str(home.secrets_dir / "token"),
                        str(tmp_path / "services"),
                    ],
                },
                {
                    "probe": "write",
                    "paths": [
                        "/usr/escaped",
                        "/etc/escaped",
                        f"{service_dir}/escaped",
                        str(home.root / "escaped"),
                        "/escaped",
                    ],
                },
                {
                    "probe": "connect",
                    "addresses": [
                        ["127.0.0.1", port],
                        ["127.0.0.1", 5432],
                        ["1.1.1.1", 53],
                        ["8.8.8.8", 443],
                    ],
                },
                {"probe": "look"},
            ],
        )
    finally:
        listener.close()
        shutil.rmtree(other)

    for task in (reads, writes, connects, look):
        assert task.state.value == "succeeded", (task.error, task.result)
    assert all(r["blocked"] for r in reads.result_value()), reads.result
    assert all(w["blocked"] for w in writes.result_value()), writes.result
    assert all(c["blocked"] for c in connects.result_value()), connects.result
    assert not (home.root / "escaped").exists()
    assert not Path(service_dir, "escaped").exists()

    seen = look.result_value()
    assert seen["interfaces"] == ["lo"]
    assert seen["visible_pids"] <= 3  # bubblewrap's init, the attempt, maybe sh
    # A session made inside the sandbox (bubblewrap's --new-session); one from
    # outside its process namespace would show as 0.
    assert seen["sid"] in (1, seen["pid"]) and seen["pid"] <= 3
    assert seen["hostname"] == "sandbox"
    assert seen["secret"] == "tok3n" and seen["env_secret"] is False
    assert not Path("/tmp/private.txt").exists()


needs_cgroups = pytest.mark.skipif(
    Cgroups.detect() is None and not os.environ.get("CI"),
    reason="this host lets the engine make no cgroups",
)


@needs_cgroups
def test_a_sandboxed_fork_bomb_stops_at_its_process_limit(
    engine: Engine, sandboxed: str, secret, check_engine_healthy
):
    (bomb,) = run(engine, [{"probe": "forkbomb"}])
    assert bomb.state.value == "succeeded", bomb.error
    found = bomb.result_value()
    assert found["children"] < 32 and "Resource temporarily unavailable" in (
        found["error"] or ""
    )
    check_engine_healthy()


def test_sandboxed_memory_over_the_limit_is_killed_for_memory(
    engine: Engine, sandboxed: str, secret, check_engine_healthy
):
    started = time.monotonic()
    (hog,) = run(engine, [{"probe": "memory"}])
    assert hog.state.value == "failed"
    assert hog.error_kind == "memory", hog.error
    assert time.monotonic() - started < 30
    check_engine_healthy()


@needs_cgroups
def test_children_together_over_the_memory_limit_are_killed_by_the_cgroup(
    engine: Engine, sandboxed: str, secret, check_engine_healthy
):
    (hog,) = run(engine, [{"probe": "memory-children"}])
    assert hog.state.value == "failed"
    assert hog.error_kind == "memory"
    assert "killed for memory" in hog.error
    check_engine_healthy()


def test_a_sandboxed_task_ignoring_sigterm_is_killed_at_its_timeout(
    engine: Engine, make_service, secret, wait_no_task_processes
):
    make_service(
        "stubborn",
        PROBE,
        runner="sandbox",
        retry_limit=0,
        timeout=1,
    )
    started = time.monotonic()
    (task,) = run(engine, [{"probe": "ignore-term"}], service="stubborn")
    assert task.state.value == "timed_out"
    assert time.monotonic() - started < 20
    wait_no_task_processes(task.id, within=5)


@pytest.mark.acceptance
def test_a_sandboxed_attempt_dies_with_its_killed_engine(
    tmp_path: Path, task_processes, wait_until
):
    from test_cli_acceptance import Cli, write_service

    cli = Cli(tmp_path / "home")
    try:
        assert cli.run("init").returncode == 0
        write_service(
            tmp_path / "sleeper",
            "sleeper",
            "import time\ntime.sleep(120)\n",
            runner="sandbox",
        )
        assert cli.run("services", "add", str(tmp_path / "sleeper")).returncode == 0
        server = cli.serve()
        task = cli.json("submit", "sleeper")
        assert wait_until(lambda: task_processes(task["id"]), within=30)
        server.kill()  # SIGKILL: no shutdown, no sweep
        server.communicate(timeout=30)
        assert wait_until(lambda: not task_processes(task["id"]), within=10), [
            p.cmdline() for p in task_processes(task["id"])
        ]
    finally:
        cli.close()


SANDBOXED_DEPENDENCY = """
name = "sandboxed-deps"
version = "1.0.0"
entrypoint = "main.py"
runner = "sandbox"
retry_limit = 0
timeout = 30

[[dependencies.artifacts]]
digest = "{digest}"
path = "data/words.txt"
"""
READS_AND_WRITES = """
import os, socket
from kos_see import service

words = open("data/words.txt").read()
os.makedirs("out", exist_ok=True)
with open("out/upper.txt", "w") as handle:
    handle.write(words.upper())
service.result({"words": len(words.split()), "host": socket.gethostname()})
"""


def test_a_sandboxed_attempt_gets_its_dependencies_and_leaves_its_outputs(
    home, engine, make_service
):
    """The sandbox runner runs the local runner's prepare and collect hooks:
    the artifact is in the sandboxed working directory, out/ reaches the vault
    and the provenance record."""
    from kos_see.dependencies.vault import Vault

    vault = Vault(str(home.root / "vault"))
    words = vault.put_bytes(b"apple banana cherry")
    make_service(
        "sandboxed-deps",
        READS_AND_WRITES,
        manifest_text=SANDBOXED_DEPENDENCY.format(digest=words.digest),
    )
    [task] = run(engine, [{}], service="sandboxed-deps")
    assert task.state.value == "succeeded", task.error
    # The sandbox's own hostname: the service ran inside bubblewrap.
    assert json.loads(task.result) == {"words": 3, "host": "sandbox"}

    attempt = engine.store.attempts(task.id)[-1]
    [fetched] = json.loads(attempt.dependencies)
    assert fetched["digest"] == words.digest and fetched["kind"] == "artifact"
    outputs = json.loads(task.outputs)
    assert vault.get_bytes(outputs["out/upper.txt"]["digest"]) == b"APPLE BANANA CHERRY"
    [record] = engine.store.provenance_records(task.id)
    assert record["statement_digest"].startswith("sha256:")
