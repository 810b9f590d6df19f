"""Prometheus metrics: read from the store, checked by promtool."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kos_see.store import TaskFilter
from kos_see.telemetry.metrics import metrics_registry, render

ECHO = """
    def run(inputs):
        return {"echo": inputs.get("n")}
"""
FAIL = "from kos_see import service\nservice.fail('no', retryable=True)\n"
SPEC_METRICS = {
    "kos_see_tasks",
    "kos_see_tasks_submitted",
    "kos_see_tasks_finished",
    "kos_see_attempts_started",
    "kos_see_attempts_finished",
    "kos_see_attempts_retried",
    "kos_see_attempt_cpu_seconds",
    "kos_see_attempt_last_start_timestamp_seconds",
    "kos_see_attempt_last_end_timestamp_seconds",
    "kos_see_task_queue_seconds",
    "kos_see_attempt_run_seconds",
    "kos_see_attempt_peak_memory_bytes",
    "kos_see_dependency_fetch_seconds",
    "kos_see_callback_deliveries",
}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def ran(api, make_service):
    make_service("echo", ECHO, entrypoint="main.py:run", retry_limit=0)
    make_service("doomed", FAIL, retry_limit=2)
    client = api.client()
    for n in range(3):
        client.wait(client.submit("echo", {"n": n})["task"]["id"])
    client.wait(client.submit("doomed", {})["task"]["id"])
    return api


def test_metrics_count_what_the_store_holds(ran):
    text = ran.client().metrics()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names >= SPEC_METRICS
    samples = _samples(text)
    assert samples[("kos_see_tasks_submitted_total", (("service", "echo"),))] == 3
    assert (
        samples[
            (
                "kos_see_tasks_finished_total",
                (("service", "echo"), ("state", "succeeded")),
            )
        ]
        == 3
    )
    assert (
        samples[
            ("kos_see_tasks_finished_total", (("service", "doomed"), ("state", "dead")))
        ]
        == 1
    )
    assert samples[("kos_see_attempts_retried_total", (("service", "doomed"),))] == 2
    assert samples[("kos_see_attempt_run_seconds_count", (("service", "echo"),))] == 3
    assert samples[("kos_see_task_queue_seconds_count", (("service", "echo"),))] == 3
    assert samples[("kos_see_tasks", (("state", "succeeded"),))] == 3
    # No task id is ever a label value.
    for _name, labels in samples:
        assert {key for key, _ in labels} <= {
            "service",
            "state",
            "outcome",
            "le",
            "kind",
        }


FETCHER = """
name = "fetcher"
version = "1.0.0"
entrypoint = "main.py"
retry_limit = 0

[[dependencies.artifacts]]
digest = "{digest}"
path = "data/words.txt"
"""


def test_dependency_fetch_times_come_from_the_attempts(api, make_service):
    from kos_see.dependencies.vault import Vault

    words = Vault(str(api.engine.home.root / "vault")).put_bytes(b"apple banana")
    source = "print(open('data/words.txt').read())"
    make_service("fetcher", source, manifest_text=FETCHER.format(digest=words.digest))
    client = api.client()
    for n in range(2):
        task = client.wait(client.submit("fetcher", {"n": n})["task"]["id"])
        assert task["state"] == "succeeded", task

    samples = _samples(client.metrics())
    labels = (("kind", "artifact"), ("service", "fetcher"))
    assert samples[("kos_see_dependency_fetch_seconds_count", labels)] == 2
    every = (("kind", "artifact"), ("le", "+Inf"), ("service", "fetcher"))
    assert samples[("kos_see_dependency_fetch_seconds_bucket", every)] == 2
    # The figures are the attempts' own: the sum is what they recorded.
    recorded = sum(
        d["fetch_seconds"]
        for t in api.engine.store.list_tasks(TaskFilter(service="fetcher"))
        for a in api.engine.store.attempts(t.id)
        for d in json.loads(a.dependencies)
    )
    total = samples[("kos_see_dependency_fetch_seconds_sum", labels)]
    assert total == pytest.approx(recorded)


def test_every_process_reports_the_same_figures(ran):
    """A second process on the same store (a worker, another API) reads the
    same numbers, because they come from the store."""
    from kos_see.store import open_store

    other = open_store(ran.engine.home.store_url(ran.engine.config))
    try:
        mine = _samples(render(metrics_registry(ran.engine.store)).decode())
        theirs = _samples(render(metrics_registry(other)).decode())
    finally:
        other.close()
    timeless = {k: v for k, v in mine.items() if "timestamp" not in k[0]}
    assert timeless == {k: theirs[k] for k in timeless}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")
def test_promtool_check_metrics_passes(ran):
    text = ran.client().metrics()
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""


def test_metrics_may_be_opened_by_config(make_api):
    api = make_api(api={"open_endpoints": ["health", "metrics"]})
    answer = httpx.get(f"{api.url}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert httpx.get(f"{api.url}/readyz").status_code == 401


def test_metrics_turned_off_by_telemetry_config_answer_501(make_api):
    api = make_api(telemetry={"enable_metrics": False})
    answer = httpx.get(
        f"{api.url}/metrics",
        headers={"Authorization": f"Bearer {api.client().token()}"},
    )
    assert answer.status_code == 501
    assert "enable_metrics" in answer.json()["message"]
