"""The config file's values have the types they are written with; names in
config keys and lists are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from kos_see.config import load_config
from kos_see.errors import ConfigError


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            '[execution]\nmax_concurrent_tasks = "32"\n',
            "execution.max_concurrent_tasks",
        ),
        ('[queue]\nfair_share = "yes"\n', "queue.fair_share"),
        ("[queue]\nretry_limit = 5.0\n", "queue.retry_limit"),
        ("[execution]\nkeep_workdirs = 1\n", "execution.keep_workdirs"),
        ("[logging]\nlevel = 3\n", "logging.level"),
    ],
)
def test_a_quoted_or_mistyped_value_in_the_file_is_refused(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        _load(tmp_path, text)
    assert "without quotes" in caught.value.message or "got" in caught.value.message


def test_durations_as_text_and_whole_numbers_for_floats_stay_accepted(tmp_path):
    config = _load(tmp_path, '[execution]\nkill_grace = "3s"\n[queue]\naging = 60\n')
    assert config.execution.kill_grace == 3.0 and config.queue.aging == 60.0


def test_the_environment_is_still_text(tmp_path):
    config = _load(
        tmp_path,
        "",
        {
            "KOS_SEE_EXECUTION__MAX_CONCURRENT_TASKS": "4",
            "KOS_SEE_QUEUE__FAIR_SHARE": "yes",
        },
    )
    assert config.execution.max_concurrent_tasks == 4
    assert config.queue.fair_share is True


@pytest.mark.parametrize("section", ["queue.tenant_weights", "quotas.tenants"])
def test_tenant_keys_must_be_tenant_names(tmp_path, section):
    value = "2.0" if section == "queue.tenant_weights" else "{ max_running = 1 }"
    with pytest.raises(ConfigError, match="not a valid tenant name"):
        _load(tmp_path, f'[{section}]\n"bad tenant!" = {value}\n')
    _load(tmp_path, f"[{section}]\nacme = {value}\n")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("NOT A NAME", "not an environment variable name"),
        ("1ABC", "not an environment variable name"),
        ("KOS_SEE_EVENTS_FD", "KOS_SEE_"),
        ("LD_PRELOAD", "loader variables"),
        ("LD_LIBRARY_PATH", "loader variables"),
        ("PYTHONPATH", "changes which code"),
    ],
)
def test_env_allowlist_refuses_bad_and_dangerous_names(tmp_path, name, reason):
    with pytest.raises(ConfigError, match=reason):
        _load(tmp_path, f'[security]\nenv_allowlist = ["PATH", "{name}"]\n')


def test_env_allowlist_accepts_ordinary_names(tmp_path):
    config = _load(tmp_path, '[security]\nenv_allowlist = ["PATH", "HOME", "my_var"]\n')
    assert config.security.env_allowlist == ["PATH", "HOME", "my_var"]


def test_default_runner_must_be_a_runner_the_engine_has(tmp_path):
    with pytest.raises(ConfigError, match="unknown runner 'docker'"):
        _load(tmp_path, '[execution]\ndefault_runner = "docker"\n')
    config = _load(tmp_path, '[execution]\ndefault_runner = "local_python"\n')
    assert config.execution.default_runner == "local_python"


def test_a_zero_worker_timeout_is_refused(tmp_path):
    with pytest.raises(
        ConfigError, match="execution.worker_timeout: 0 is not a timeout"
    ):
        _load(tmp_path, '[execution]\nworker_timeout = "0"\n')


def test_a_zero_manifest_timeout_is_refused(make_service, registry):
    from kos_see.errors import ManifestError

    name = make_service("zero", "", timeout="0", register=False)
    with pytest.raises(ManifestError, match="0 does not mean 'none'"):
        registry.add(make_service.folder(name))
