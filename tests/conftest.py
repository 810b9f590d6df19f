"""Shared fixtures: an engine home in ``tmp_path``, engines on it, services.

Everything here is real: a SQLite file under ``tmp_path``, real service
folders with a ``service.toml`` and a ``main.py``, real attempt processes.
Nothing is mocked.

Fixtures (each documented where it is defined):

``home``
    a :class:`kos_see.home.Home` initialised in ``tmp_path / "home"``.
``engine_config``
    the small-timeout :class:`EngineConfig` every engine here uses by default.
``make_engine``
    factory: ``make_engine(serve=True, execution={...}, queue={...})`` opens an
    engine on ``home`` with ``engine_config`` plus the given overrides; closed
    in teardown.
``engine``
    ``make_engine()``: an engine on ``home`` that serves (runs a worker pool).
``idle_engine``
    ``make_engine(serve=False)``: store, registry and dispatcher only, so that
    submitted tasks stay queued for a test to drive by hand.
``registry``
    a :class:`Registry` on the home's store, for registry tests.
``make_service``
    factory that writes a service folder and registers it; returns its name.
``run_task``
    submit a task through ``engine`` and wait until it ends.
``check_engine_healthy``
    run an ordinary task through ``engine`` and assert it succeeds.
``task_processes`` / ``wait_no_task_processes`` / ``pid_alive`` / ``wait_until``
    find (or wait for the end of) live processes of a task, via psutil.
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from kos_see.config import EngineConfig, validate_config
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.home import Home
from kos_see.models import TaskRecord
from kos_see.registry import Registry
from kos_see.store import Store, open_store

# The configuration of every test engine: everything that waits is short, so
# that timeouts, kills, heartbeats and retries happen within a test's time.
TEST_CONFIG: dict[str, dict[str, Any]] = {
    "execution": {
        "worker_timeout": 60,
        "max_concurrent_tasks": 4,
        "kill_grace": 0.5,
        "heartbeat_seconds": 0.5,
        "lease_seconds": 2,
        "shutdown_grace": 1,
    },
    "queue": {"retry_base": 0.01, "retry_cap": 0.05},
}


def merged_config(**sections: dict[str, Any]) -> EngineConfig:
    """``TEST_CONFIG`` with ``sections`` laid over it, key by key, validated."""
    data = {name: dict(values) for name, values in TEST_CONFIG.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return validate_config(data, source="tests")


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """An initialised engine home (config.toml written) in ``tmp_path/home``."""
    home = Home(tmp_path / "home")
    assert home.init()
    return home


@pytest.fixture
def engine_config(store_url: str) -> EngineConfig:
    """The test configuration (``TEST_CONFIG``) as a validated EngineConfig."""
    return merged_config(**_store_section(store_url))


EngineFactory = Callable[..., Engine]


@pytest.fixture
def make_engine(home: Home, store_url: str) -> Iterator[EngineFactory]:
    """Factory for engines on ``home``; every engine it made is closed after
    the test.

    ``make_engine(serve=True, **sections)``: ``sections`` override
    ``TEST_CONFIG`` per key, e.g. ``make_engine(execution={"output_cap_bytes":
    100})``. Only one engine per home may serve at a time.
    """
    opened: list[Engine] = []

    def factory(serve: bool = True, **sections: dict[str, Any]) -> Engine:
        sections = {**_store_section(store_url), **sections}
        engine = Engine.open(home, config=merged_config(**sections))
        opened.append(engine)
        if serve:
            engine.serve()
        return engine

    yield factory
    for engine in reversed(opened):
        engine.close()
    for engine in opened:
        # The default work area lies outside tmp_path (in /dev/shm when there
        # is one): remove it once empty, so that test homes leave nothing.
        with contextlib.suppress(OSError):
            engine.home.workdir_root(engine.config).rmdir()


@pytest.fixture
def engine(make_engine: EngineFactory) -> Engine:
    """A serving engine on ``home`` with the test configuration."""
    return make_engine(serve=True)


@pytest.fixture
def idle_engine(make_engine: EngineFactory) -> Engine:
    """An engine on ``home`` that does not serve: nothing leases its tasks."""
    return make_engine(serve=False)


@pytest.fixture
def home_store(home: Home, engine_config: EngineConfig) -> Iterator[Store]:
    """A store of its own on the home's SQLite file (the engines share the file)."""
    store = open_store(home.store_url(engine_config))
    yield store
    store.close()


@pytest.fixture
def registry(home_store: Store) -> Registry:
    """A registry on the home's store; what it registers every engine sees."""
    return Registry(home_store)


def _toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (inline tables for mappings, one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML form for {value!r}")


class ServiceFactory:
    """Writes service folders under ``root`` and registers them.

    ``factory(name, source, ...)`` writes ``root/<name>-<version>/`` with a
    ``service.toml`` and a ``main.py`` holding ``source`` (dedented), registers
    it in the home's registry and returns ``name``. Keyword arguments:

    - ``version`` ("1.0.0"), ``entrypoint`` ("main.py"; "main.py:run" calls
      the function ``run(inputs)`` and stores its return value as the result);
    - ``timeout`` (seconds or a duration string), ``retry_limit``, ``limits``
      (a dict, the manifest's ``[limits]``), ``input_schema`` (a dict),
      ``runner``, ``queue_class``, ``description``: written when given;
    - ``files``: more files to write, ``{relative path: text}``;
    - ``manifest_text``: the whole ``service.toml`` verbatim instead;
    - ``register=False``: only write the folder.

    ``factory.folder(name, version)`` is the folder it writes for a version.
    """

    def __init__(self, root: Path, registry: Registry) -> None:
        self.root = root
        self.registry = registry

    def folder(self, name: str, version: str = "1.0.0") -> Path:
        return self.root / f"{name}-{version}"

    def write(
        self,
        name: str,
        source: str = "",
        *,
        version: str = "1.0.0",
        entrypoint: str = "main.py",
        manifest_text: str | None = None,
        files: dict[str, str] | None = None,
        **fields: Any,
    ) -> Path:
        folder = self.folder(name, version)
        folder.mkdir(parents=True, exist_ok=True)
        if manifest_text is None:
            manifest = {"name": name, "version": version, "entrypoint": entrypoint}
            manifest.update({k: v for k, v in fields.items() if v is not None})
            manifest_text = "".join(
                f"{_toml_key(k)} = {toml_value(v)}\n" for k, v in manifest.items()
            )
        (folder / "service.toml").write_text(manifest_text, encoding="utf-8")
        (folder / "main.py").write_text(textwrap.dedent(source), encoding="utf-8")
        for relative, text in (files or {}).items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return folder

    def __call__(
        self, name: str, source: str = "", *, register: bool = True, **options: Any
    ) -> str:
        folder = self.write(name, source, **options)
        if register:
            self.registry.add(folder)
        return name


@pytest.fixture
def make_service(tmp_path: Path, registry: Registry) -> ServiceFactory:
    """Factory for registered services in ``tmp_path/services``; see
    :class:`ServiceFactory`."""
    return ServiceFactory(tmp_path / "services", registry)


@pytest.fixture
def run_task(engine: Engine) -> Callable[..., TaskRecord]:
    """``run_task(service, input, timeout=30, **request_fields)``: submit
    through the serving ``engine``'s dispatcher, wait for the end and return
    the task (asserting that it did end within ``timeout``)."""

    def run(
        service: str, input: Any = None, timeout: float = 30, **fields: Any
    ) -> TaskRecord:
        request = SubmitRequest(
            service=service, input={} if input is None else input, **fields
        )
        task = engine.dispatcher.submit(request).task
        done = engine.wait(task.id, timeout=timeout)
        assert done.terminal, f"task {task.id} still {done.state} after {timeout}s"
        return done

    return run


HEALTHY_SOURCE = """
    def run(inputs):
        return {"echo": inputs["n"] * 2}
"""


@pytest.fixture
def check_engine_healthy(
    make_service: ServiceFactory, run_task: Callable[..., TaskRecord]
) -> Callable[[], None]:
    """Call to assert that the engine still runs an ordinary task to success."""
    counter = iter(range(1, 1_000_000))

    def check() -> None:
        name = "healthy-echo"
        if not make_service.folder(name).exists():
            make_service(
                name,
                HEALTHY_SOURCE,
                entrypoint="main.py:run",
                timeout=20,
                retry_limit=0,
            )
        n = next(counter)
        task = run_task(name, {"n": n}, timeout=20)
        assert task.state == "succeeded", (task.state, task.error)
        assert task.result_value() == {"echo": n * 2}

    return check


def _task_processes(task_id: str) -> list[psutil.Process]:
    found = []
    marker = f"/{task_id}-"  # the attempt's working directory: <root>/<id>-<n>
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("KOS_SEE_TASK_ID") == task_id or marker in proc.cwd():
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until(
    predicate: Callable[[], bool], within: float, step: float = 0.05
) -> bool:
    deadline = time.monotonic() + within
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


@pytest.fixture
def task_processes() -> Callable[[str], list[psutil.Process]]:
    """``task_processes(task_id)``: live (not zombie) processes of the task:
    those whose environment names it as ``KOS_SEE_TASK_ID``, or whose current
    directory is one of its attempts' working directories (``<id>-<n>``, even
    once deleted).

    The second test is needed because ``/proc/<pid>/environ`` shows the
    environment a process was exec'd with: a child of the fork server gets its
    attempt's environment only after the fork, so it shows the server's."""
    return _task_processes


@pytest.fixture
def pid_alive() -> Callable[[int], bool]:
    """``pid_alive(pid)``: True while the process has not exited (a zombie
    counts as exited)."""
    return _pid_alive


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """``wait_until(predicate, within, step=0.05)``: poll until ``predicate()``
    is true (returns True) or ``within`` seconds passed (returns False)."""
    return _wait_until


@pytest.fixture
def wait_no_task_processes() -> Callable[..., None]:
    """``wait_no_task_processes(task_id, within=2.5)``: assert that no process
    of the task is alive, allowing the engine's orphan sweep ``within``
    seconds to finish them."""

    def check(task_id: str, within: float = 2.5) -> None:
        _wait_until(lambda: not _task_processes(task_id), within)
        left = []
        for proc in _task_processes(task_id):
            try:
                left.append((proc.pid, proc.cmdline()))
            except psutil.Error:
                continue
        assert not left, f"processes of task {task_id} still alive: {left}"

    return check


# Principals and policy: real keys, real rows, a real Casbin policy file.


class PrincipalFactory:
    """``factory(name, tenant="acme", role="developer")`` makes an Ed25519 key,
    adds the principal to the home's store and returns the SigningKey.
    ``factory.policy(text)`` writes the home's policy file (Casbin lines)."""

    def __init__(self, home: Home, store: Store) -> None:
        self.home = home
        self.store = store

    def __call__(self, name: str, tenant: str = "acme", role: str = "developer") -> Any:
        from kos_see.security.keys import generate
        from kos_see.security.principals import PrincipalStore

        key = generate()
        PrincipalStore(self.store).add(name, tenant, role, key.public)
        return key

    def policy(self, text: str) -> Path:
        path = self.home.root / "policy.csv"
        path.write_text(textwrap.dedent(text))
        return path


@pytest.fixture
def make_principal(home: Home, home_store: Store) -> PrincipalFactory:
    """Factory for principals with keys on ``home``; see :class:`PrincipalFactory`."""
    return PrincipalFactory(home, home_store)


# The API: a real uvicorn and gRPC server on loopback, on free ports.


class ApiFixture:
    """A serving engine with its API server started, and two principals:
    ``alice`` (tenant ``acme``) and ``ops`` (every tenant), each with a key."""

    def __init__(self, engine: Engine) -> None:
        from kos_see.api.server import ApiServer
        from kos_see.security.keys import generate
        from kos_see.security.principals import PrincipalStore

        self.engine = engine
        self.keys = {"alice": generate(), "ops": generate()}
        principals = PrincipalStore(engine.store)
        principals.add("alice", "acme", "submitter", self.keys["alice"].public)
        principals.add("ops", "*", "admin", self.keys["ops"].public)
        engine.home.policy_path(engine.config).write_text(API_POLICY)
        self.server = ApiServer(engine)
        self.addresses = self.server.start()
        self.url = self.addresses.rest
        self._clients: list[Any] = []

    def client(self, principal: str = "alice") -> Any:
        from kos_see.client import Client

        client = Client(self.url, principal, self.keys.get(principal))
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.server.stop()


# The API fixture's policy: operators do everything; a submitter runs, reads
# and cancels any service of its own tenant in every queue class, with
# webhooks to loopback.
API_POLICY = """\
p, admin, *, *, *, allow
p, submitter, *, submit, service:*, allow
p, submitter, *, submit, class:*, allow
p, submitter, *, read, service:*, allow
p, submitter, *, cancel, service:*, allow
p, submitter, *, submit, callback:127.0.0.1, allow
"""


API_SECTIONS: dict[str, dict[str, Any]] = {
    "api": {"port": 0, "grpc_port": 0, "open_endpoints": ["health", "readiness"]},
    "callbacks": {
        "allowed_hosts": ["127.0.0.1"],
        "retry_base": 0.05,
        "retry_cap": 0.2,
        "poll": 0.1,
        "timeout": 2,
    },
}


@pytest.fixture
def make_api(make_engine: EngineFactory) -> Iterator[Callable[..., ApiFixture]]:
    """``make_api(**sections)``: a serving engine (``API_SECTIONS`` and
    ``sections`` over the test configuration) with its API started; stopped
    after the test."""
    started: list[ApiFixture] = []

    def factory(**sections: dict[str, Any]) -> ApiFixture:
        merged = {name: dict(values) for name, values in API_SECTIONS.items()}
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        api = ApiFixture(make_engine(serve=True, **merged))
        started.append(api)
        return api

    yield factory
    for api in reversed(started):
        api.close()


@pytest.fixture
def api(make_api: Callable[..., ApiFixture]) -> ApiFixture:
    """The default API fixture; see :class:`ApiFixture`."""
    return make_api()


# Both stores. A test module opts in with ``pytestmark =
# pytest.mark.both_stores``: its tests then run once on the home's SQLite file
# and once on PostgreSQL. Every test run has a database of its own (a random
# name, dropped at the end), emptied before each test, so that parallel runs
# never meet. Without a server the PostgreSQL half skips with a message,
# except where KOS_SEE_REQUIRE_SERVICES=1 (CI): there it fails.

PG_ADMIN_URL = os.environ.get(
    "KOS_SEE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_TEST_URL = os.environ.get("KOS_SEE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def services_required() -> bool:
    return os.environ.get("KOS_SEE_REQUIRE_SERVICES") == "1"


def missing_service(message: str) -> None:
    """Skip on a laptop without the server; fail where it must be there."""
    if services_required():
        pytest.fail(f"{message} (KOS_SEE_REQUIRE_SERVICES=1: CI needs it)")
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_stores: run the module's tests on SQLite and PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker("both_stores")
    if marked and "store_backend" in metafunc.fixturenames:
        metafunc.parametrize("store_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"``, or ``"postgresql"`` in the second run of a
    ``both_stores`` module."""
    return getattr(request, "param", "sqlite")


def _admin_connect(url: str = PG_ADMIN_URL) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a database of this test run, migrated; dropped at the end."""
    import psycopg

    try:
        admin = _admin_connect()
    except psycopg.OperationalError as exc:
        missing_service(f"no PostgreSQL at {PG_ADMIN_URL}: {exc}")
    name = f"kos_see_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    from kos_see.store.open import upgrade_url

    upgrade_url(url)
    yield url
    with _admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_postgres(url: str) -> None:
    from kos_see.store.schema import metadata

    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with _admin_connect(url) as conn:
        conn.execute(f"TRUNCATE {names} RESTART IDENTITY")


@pytest.fixture
def store_url(store_backend: str, request: pytest.FixtureRequest) -> str:
    """The store the test's engines use: "" for the home's SQLite file, or the
    run's PostgreSQL database, emptied for this test."""
    if store_backend != "postgresql":
        return ""
    url = request.getfixturevalue("postgres_database")
    empty_postgres(url)
    return url


def _store_section(store_url: str) -> dict[str, dict[str, Any]]:
    return {"store": {"url": store_url}} if store_url else {}


@pytest.fixture
def redis_url() -> str:
    """A reachable Redis for this test (database 0 on the test server); each
    test names its streams with a prefix of its own."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing_service(f"no Redis at {REDIS_TEST_URL}: {exc}")
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture(autouse=True)
def _store_url_in_environment(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI processes a PostgreSQL test starts use the same database."""
    if store_url:
        monkeypatch.setenv("KOS_SEE_STORE__URL", store_url)
