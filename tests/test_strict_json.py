"""JSON is read by the standard's rules: task input, results and events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kos_see import strict_json
from kos_see.cli.tasks import parse_input
from kos_see.errors import UsageError

NOT_JSON = {
    "nan": ("[NaN]", "NaN is not a JSON value"),
    "huge-float": ('{"x": 1e400}', "too large for a float"),
    "huge-negative": ("-1e400", "too large for a float"),
    "long-integer": ("1" + "0" * 5000, "more than 4300 digits"),
    "surrogate": ('{"s": "a\\ud800b"}', "lone surrogate"),
    "surrogate-key": ('{"\\udfff": 1}', "lone surrogate"),
    "duplicate": ('{"a": 1, "a": 2}', "duplicate key 'a'"),
}


@pytest.mark.parametrize("case", sorted(NOT_JSON))
def test_input_that_is_not_strict_json_is_bad_usage(case: str):
    text, reason = NOT_JSON[case]
    with pytest.raises(UsageError, match="not valid JSON") as caught:
        parse_input(text)
    assert reason in caught.value.message
    assert caught.value.exit_code == 2


def test_strict_json_reads_ordinary_json():
    value = strict_json.loads('{"a": [1, -2.5e10, "\\u00e9", null, true]}')
    assert value == {"a": [1, -2.5e10, "é", None, True]}


def test_surrogates_may_be_left_to_the_caller():
    assert strict_json.loads('"\\ud800"', allow_surrogates=True) == "\ud800"


@pytest.mark.parametrize("case", ["long-integer", "surrogate", "huge-float"])
def test_the_cli_exits_2_naming_why(tmp_path: Path, case: str):
    text, reason = NOT_JSON[case]
    home = tmp_path / "home"
    env = {**os.environ, "KOS_SEE_HOME": str(home), "COLUMNS": "200"}
    command = [sys.executable, "-m", "kos_see.cli"]
    subprocess.run([*command, "init"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [*command, "submit", "svc", "--input", text],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "not valid JSON" in done.stderr
    assert reason in done.stderr
    assert "internal error" not in done.stderr
