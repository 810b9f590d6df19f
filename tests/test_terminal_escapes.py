"""Service-provided text cannot drive the terminal: control characters are
shown escaped in human output, and kept as they are in --json output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from kos_see.cli import context as cli_context
from kos_see.cli.app import main
from kos_see.cli.output import plain, shown
from kos_see.engine import Engine
from kos_see.home import Home

EVIL = "\x1b]0;pwned\x07\x1b[31mred\r\x9b"
ESCAPED = "\\x1b]0;pwned\\x07\\x1b[31mred\\x0d\\x9b"
SOURCE = f"""
    import sys
    from kos_see import service

    service.progress(1, 2, message={EVIL!r})
    service.log({EVIL!r})
    print({EVIL!r})
    sys.stdout.flush()
    service.fail({EVIL!r}, retryable=False)
"""


@dataclass
class Done:
    code: int
    out: str
    err: str


@pytest.fixture
def kos(
    home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Done]:
    """``kos(*args)``: run ``kos-see ARGS`` in this process on ``home``."""
    monkeypatch.setenv("KOS_SEE_HOME", str(home.root))
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(cli_context, "configure", lambda *_a, **_k: None)

    def run(*args: str) -> Done:
        monkeypatch.setattr(sys, "argv", ["kos-see", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as ended:
            main()
        out, err = capsys.readouterr()
        return Done(ended.value.code or 0, out, err)

    return run


def test_shown_escapes_controls_but_keeps_tabs_and_newlines():
    assert shown(EVIL) == ESCAPED
    assert shown("a\tb\nc é") == "a\tb\nc é"
    assert plain(EVIL).plain == ESCAPED


def _raw_controls(text: str) -> bool:
    return any(c in text for c in "\x1b\x07\r\x9b")


def test_wait_logs_watch_and_status_escape_service_text(
    kos, engine: Engine, make_service
):
    make_service("evil", SOURCE, retry_limit=0)
    waited = kos("submit", "evil", "--wait")
    assert waited.code == 4, waited.err
    task_id = waited.out.split()[0]
    assert f"error: {ESCAPED}" in waited.out
    assert f"progress 1/2 {ESCAPED}" in waited.out
    assert not _raw_controls(waited.out)

    logs = kos("logs", task_id)
    assert logs.code == 0, logs.err
    assert logs.out.count(ESCAPED) >= 2  # the log line and the captured stdout
    assert not _raw_controls(logs.out)

    for args in (("watch", task_id), ("status", task_id), ("list",)):
        done = kos(*args)
        assert ESCAPED[:20] in done.out, (args, done.out)
        assert not _raw_controls(done.out), args


def test_json_output_keeps_the_text_as_stored(kos, engine: Engine, make_service):
    make_service("evil-json", SOURCE, retry_limit=0)
    waited = kos("submit", "evil-json", "--wait", "--json")
    assert waited.code == 4, waited.err
    assert json.loads(waited.out)["error"] == EVIL
