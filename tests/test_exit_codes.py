"""Exit codes say the same thing for the same kind of mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kos_see.dispatcher import SubmitRequest
from kos_see.engine import Engine
from kos_see.errors import IdempotencyConflict

KOS_SEE = [sys.executable, "-m", "kos_see.cli"]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KOS_SEE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    return subprocess.run(
        [*KOS_SEE, *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "when", [("--not-before", "2099-01-01T00:00:00+00:00"), ("--delay", "3700d")]
)
def test_a_deferral_over_ten_years_is_bad_usage_either_way(tmp_path: Path, when):
    assert _cli(tmp_path, "init").returncode == 0
    done = _cli(tmp_path, "submit", "svc", *when)
    assert done.returncode == 2, done.stderr
    assert "10 years" in done.stderr


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"priority": 5}, "priority"),
        ({"input": {"n": 2}}, "input"),
    ],
)
def test_reusing_a_key_with_another_field_is_refused_naming_it(
    idle_engine: Engine, make_service, change, field
):
    make_service("keyed", "")
    first = {"service": "keyed", "input": {"n": 1}, "idempotency_key": "k1"}
    original = idle_engine.dispatcher.submit(SubmitRequest(**first)).task
    again = idle_engine.dispatcher.submit(SubmitRequest(**first))
    assert (again.task.id, again.created) == (original.id, False)
    with pytest.raises(IdempotencyConflict, match=f"with another {field}") as caught:
        idle_engine.dispatcher.submit(SubmitRequest(**(first | change)))
    assert caught.value.details["fields"] == [field]
    assert caught.value.exit_code == 3
