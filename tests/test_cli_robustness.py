"""The CLI on awkward input: text with square brackets, bad config overrides,
hostile JSON, ``--home`` after the command, narrow terminals, limits at submit.

Most tests call ``kos_see.cli.app.main`` in this process (a ``kos-see`` start
costs about a second); the ones about what the process does with its argv,
environment or terminal run ``python -m kos_see.cli`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kos_see.cli import context as cli_context
from kos_see.cli.app import main
from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import RequestRefused
from kos_see.home import Home

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]
TEN_YEARS = 10 * 365.25 * 86400


@dataclass
class Done:
    code: int
    out: str
    err: str


Kos = Callable[..., Done]


@pytest.fixture
def kos(
    home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Kos:
    """``kos(*args)``: run ``kos-see ARGS`` in this process on ``home``."""
    monkeypatch.setenv("KOS_SEE_HOME", str(home.root))
    # The CLI sets up logging for a whole process; here that is pytest's.
    monkeypatch.setattr(cli_context, "configure", lambda *_a, **_k: None)

    def run(*args: str) -> Done:
        monkeypatch.setattr(sys, "argv", ["kos-see", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as ended:
            main()
        out, err = capsys.readouterr()
        return Done(ended.value.code or 0, out, err)

    return run


def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KOS_SEE, *args],
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


BRACKETS = "[/y] p"
BRACKET_SOURCE = f"""
    import time
    from kos_see import service

    service.progress(1, 2, message={BRACKETS!r})
    time.sleep(1.2)
    service.fail({BRACKETS!r}, retryable=False)
"""


# 1. Text with square brackets is shown as it is, never parsed as markup.


def test_bracketed_names_in_errors_are_shown_not_parsed(home: Home):
    env = {"KOS_SEE_HOME": str(home.root)}
    submitted = run_cli("submit", "nope[/a]", "-i", "{}", env=env)
    assert submitted.returncode == 3, submitted.stderr
    assert "no service 'nope[/a]'" in submitted.stderr
    status = run_cli("status", "zz[/a]", env=env)
    assert status.returncode == 3, status.stderr
    assert "no task 'zz[/a]'" in status.stderr


def test_usage_errors_and_json_errors_keep_brackets(kos: Kos):
    bad_state = kos("list", "--state", "q[/a]")
    assert bad_state.code == 2
    assert "--state 'q[/a]' is not a state" in bad_state.err
    emoji = kos("status", "zz:smile:")
    assert emoji.code == 3
    assert "no task 'zz:smile:'" in emoji.err
    refused = kos("status", "zz[/a]", "--json")
    assert refused.code == 3
    assert json.loads(refused.out)["task_id"] == "zz[/a]"


def test_service_messages_with_brackets_in_wait_status_result_and_watch(
    kos: Kos, engine: Engine, make_service
):
    make_service("brackets", BRACKET_SOURCE, retry_limit=0)
    waited = kos("submit", "brackets", "--wait")
    assert waited.code == 4, waited.err
    task_id = waited.out.split()[0]
    assert f"progress 1/2 {BRACKETS}" in waited.out
    assert f"error: {BRACKETS}" in waited.out

    status = kos("status", task_id)
    assert status.code == 0, status.err
    assert f"progress 1/2 {BRACKETS}" in status.out

    result = kos("result", task_id)
    assert result.code == 4, result.err
    assert f"error: {BRACKETS}" in result.out

    watched = kos("watch", task_id)
    assert watched.code == 4, watched.err
    bar, table = watched.out.split("\n", 1)
    assert BRACKETS in bar and BRACKETS in table
    # The bar shows the task's own time (1.2 s or more), not the watch's (0 s).
    elapsed = re.search(r"(\d+):(\d\d):(\d\d)\s*$", bar)
    assert elapsed is not None, bar
    hours, minutes, seconds = map(int, elapsed.groups())
    assert 1 <= hours * 3600 + minutes * 60 + seconds < 60, bar

    listed = kos("list")
    assert BRACKETS in listed.out


def test_manifest_text_with_brackets_in_services_list_and_show(kos: Kos, make_service):
    make_service("bracketed", "", description="x [/x] and [bold]")
    listed = kos("services", "list")
    assert listed.code == 0, listed.err
    assert "x [/x] and [bold]" in listed.out
    shown = kos("services", "show", "bracketed")
    assert shown.code == 0, shown.err
    assert "bracketed@1.0.0  x [/x] and [bold]" in shown.out


def test_a_refused_manifest_shows_the_name_pattern_whole(
    kos: Kos, make_service, tmp_path: Path
):
    folder = make_service.write("Bad-Name", "")
    done = kos("services", "add", str(folder))
    assert done.code == 3, done.err
    assert "^[a-z0-9][a-z0-9_.-]{0,63}$" in done.err


def test_config_show_prints_its_section_headers(kos: Kos):
    shown = kos("config", "show")
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    for section in ("[execution]", "[queue]", "[store]", "[logging]"):
        assert section in lines


# 2. Configuration errors name their source.


def test_an_environment_override_error_names_the_variable(home: Home):
    env = {"KOS_SEE_HOME": str(home.root)}
    bad = run_cli(
        "config", "show", env={**env, "KOS_SEE_EXECUTION__MAX_CONCURRENT_TASKS": "abc"}
    )
    assert bad.returncode == 2, bad.stderr
    assert "KOS_SEE_EXECUTION__MAX_CONCURRENT_TASKS" in bad.stderr
    assert "config.toml" not in bad.stderr
    unknown = run_cli("config", "show", env={**env, "KOS_SEE_EXECUTON__X": "1"})
    assert unknown.returncode == 2, unknown.stderr
    assert "KOS_SEE_EXECUTON__X" in unknown.stderr
    assert "config.toml" not in unknown.stderr


def test_a_file_error_still_names_the_file(kos: Kos, home: Home):
    path = home.config_path
    path.write_text(path.read_text().replace("[queue]", "[queue]\nretry_limt = 3"))
    done = kos("config", "show")
    assert done.code == 2
    assert str(path) in done.err and "queue.retry_limt" in done.err
    assert "environment" not in done.err


def test_an_unsupported_store_url_is_a_config_error(kos: Kos, home: Home):
    path = home.config_path
    path.write_text(
        path.read_text().replace('[store]\nurl = ""', '[store]\nurl = "mysql://x"')
    )
    assert "mysql://x" in path.read_text()
    for command in (("list",), ("config", "show")):
        done = kos(*command)
        assert done.code == 2, (command, done.err)
        assert "store.url" in done.err


def test_a_sqlite_store_url_is_accepted(kos: Kos, home: Home, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    path = home.config_path
    path.write_text(
        path.read_text().replace('[store]\nurl = ""', f'[store]\nurl = "{url}"')
    )
    done = kos("list", "--json")
    assert done.code == 0, done.err
    assert (tmp_path / "other.db").exists()


def test_the_config_template_says_where_work_folders_go(home: Home):
    line = next(
        line
        for line in home.config_path.read_text().splitlines()
        if line.startswith("workdir_root")
    )
    assert "/dev/shm" in line and "<home>/work" in line


# 3. Input that JSON does not allow is bad usage.


def test_deeply_nested_input_is_bad_usage(tmp_path: Path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    done = run_cli("submit", "svc", "-i", f"@{deep}")
    assert done.returncode == 2, done.stderr
    assert "nested too deeply" in done.stderr


@pytest.mark.parametrize("text", ["NaN", "Infinity", '{"a": -Infinity}', "[NaN]"])
def test_nan_and_infinity_are_not_json(kos: Kos, text: str):
    done = kos("submit", "svc", "-i", text)
    assert done.code == 2, done.err
    assert "not valid JSON" in done.err


def test_duplicate_keys_are_refused_naming_the_key(kos: Kos):
    done = kos("submit", "svc", "-i", '{"a": 1, "b": {"c": 1, "c": 2}}')
    assert done.code == 2, done.err
    assert "duplicate key 'c'" in done.err
    scheduled = kos(
        "schedules", "add", "s", "--cron", "@daily", "--tz", "UTC",
        "--service", "svc", "-i", '{"k": 1, "k": 1}',
    )  # fmt: skip
    assert scheduled.code == 2, scheduled.err
    assert "duplicate key 'k'" in scheduled.err


def test_a_deep_input_under_a_recursive_schema_is_refused_not_a_crash(
    idle_engine: Engine, make_service
):
    make_service("nested", "", input_schema={"type": "array", "items": {"$ref": "#"}})
    value: list = []
    for _ in range(900):
        value = [value]
    with pytest.raises(RequestRefused, match="nested too deeply"):
        idle_engine.dispatcher.submit(SubmitRequest(service="nested", input=value))


# 4. --home anywhere on the command line; README on --json.


def test_home_may_follow_the_command(tmp_path: Path):
    other = tmp_path / "elsewhere"
    env = {"KOS_SEE_HOME": str(tmp_path / "not-this-one")}
    done = run_cli("init", "--home", str(other), env=env)
    assert done.returncode == 0, done.stderr
    assert (other / "config.toml").is_file()
    assert not (tmp_path / "not-this-one").exists()
    shown = run_cli("config", "show", f"--home={other}", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["execution"]["max_concurrent_tasks"] == 32


def test_hoist_home_moves_only_home_options_before_a_double_dash():
    from kos_see.cli.app import hoist_home

    assert hoist_home(["submit", "x", "--home", "/h", "--json"]) == [
        "--home",
        "/h",
        "submit",
        "x",
        "--json",
    ]
    assert hoist_home(["list", "--home=/h"]) == ["--home=/h", "list"]
    assert hoist_home(["a", "--", "--home", "/h"]) == ["a", "--", "--home", "/h"]
    assert hoist_home(["list", "--home"]) == ["list", "--home"]


def test_readme_says_which_commands_take_json():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "Every command takes `--json`" not in readme
    assert "Every command that prints a result (all but `serve`) takes" in readme


# 5. status of a deferred task, narrow list tables.


def test_status_of_a_deferred_task_says_when_it_runs(kos: Kos, make_service):
    make_service("later", "")
    task_id = kos("submit", "later", "--delay", "2h").out.strip()
    task = json.loads(kos("status", task_id, "--json").out)
    assert task["state"] == "queued"
    shown = kos("status", task_id)
    assert shown.code == 0, shown.err
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task["not_before"]))
    assert f"not before {at}" in shown.out


def test_list_never_cuts_task_ids_on_a_narrow_terminal(home: Home, make_service):
    make_service("a-service-with-a-long-name", "")
    env = {"KOS_SEE_HOME": str(home.root)}
    submitted = run_cli(
        "submit", "a-service-with-a-long-name", "-i", '{"pad": "' + "x" * 80 + '"}',
        env=env,
    )  # fmt: skip
    task_id = submitted.stdout.strip()
    assert len(task_id) == 24, submitted.stderr
    listed = run_cli("list", env={**env, "COLUMNS": "80"})
    assert listed.returncode == 0, listed.stderr
    assert task_id in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80


def test_watch_elapsed_is_the_tasks_own_time(make_service, idle_engine: Engine):
    from kos_see.cli.watch import elapsed_text

    make_service("timed", "")
    task = idle_engine.dispatcher.submit(SubmitRequest(service="timed", input={})).task
    assert elapsed_text(task, now=task.created_at + 75.4) == "0:01:15"
    done = idle_engine.dispatcher.cancel(task.id)
    assert done.terminal and done.finished_at is not None
    assert elapsed_text(done, now=done.created_at + 3600) == "0:00:00"


# 6. Limits at submit.


@pytest.mark.parametrize(
    "field,value",
    [
        ("tenant", ""),
        ("tenant", "a b"),
        ("tenant", "-lead"),
        ("tenant", "x" * 65),
        ("tenant", "acme\n"),
        ("principal", "[/a]"),
        ("principal", "ü"),
    ],
)
def test_submit_refuses_a_bad_tenant_or_principal(
    idle_engine: Engine, make_service, field: str, value: str
):
    make_service("who", "")
    with pytest.raises(RequestRefused, match=field):
        idle_engine.dispatcher.submit(
            SubmitRequest(service="who", input={}, **{field: value})
        )


def test_submit_accepts_plain_tenants_and_principals(idle_engine: Engine, make_service):
    make_service("who", "")
    for value in ("acme", "a", "Acme.EU_1@x-y", "x" * 64):
        task = idle_engine.dispatcher.submit(
            SubmitRequest(service="who", input={}, tenant=value, principal=value)
        ).task
        assert (task.tenant, task.principal) == (value, value)


def test_submit_limits_idempotency_keys_to_1_to_200_characters(
    idle_engine: Engine, make_service
):
    make_service("keyed", "")
    for key in ("", "k" * 201):
        with pytest.raises(RequestRefused, match="idempotency"):
            idle_engine.dispatcher.submit(
                SubmitRequest(service="keyed", input={}, idempotency_key=key)
            )
    kept = idle_engine.dispatcher.submit(
        SubmitRequest(service="keyed", input={}, idempotency_key="k" * 200)
    )
    assert kept.created


def test_submit_refuses_a_not_before_more_than_ten_years_ahead(
    idle_engine: Engine, make_service
):
    make_service("far", "")
    now = time.time()
    with pytest.raises(RequestRefused, match="10 years"):
        idle_engine.dispatcher.submit(
            SubmitRequest(service="far", input={}, not_before=now + TEN_YEARS + 60),
            now=now,
        )
    soon = idle_engine.dispatcher.submit(
        SubmitRequest(service="far", input={}, not_before=now + TEN_YEARS - 60),
        now=now,
    )
    assert soon.task.queue_class == "deferred"


def test_cli_refuses_a_negative_wait_timeout_and_a_huge_delay(kos: Kos, make_service):
    make_service("limits", "")
    negative = kos("submit", "limits", "--wait", "--timeout", "-1")
    assert negative.code == 2, negative.err
    huge = kos("submit", "limits", "--delay", "3700d")
    assert huge.code == 2, huge.err
    assert "10 years" in huge.err
    assert json.loads(kos("list", "--json").out) == []


def test_a_schedule_for_a_bad_tenant_is_refused_at_add(kos: Kos, make_service):
    make_service("sched", "")
    done = kos(
        "schedules", "add", "s1", "--cron", "@daily", "--tz", "UTC",
        "--service", "sched", "--tenant", "a b",
    )  # fmt: skip
    assert done.code == 3, done.err
    assert "tenant 'a b'" in done.err
