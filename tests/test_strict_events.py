"""Results and events of an attempt follow the same JSON rules as input."""

from __future__ import annotations

import pytest

from kos_see.runners.channel import EventChannel
from kos_see.states import TaskState

RAW_LINE = """
    import os
    os.write(int(os.environ["KOS_SEE_EVENTS_FD"]), {line!r} + b"\\n")
"""

BAD_RESULTS = {
    "nan": b'{"type": "result", "value": NaN}',
    "huge-float": b'{"type": "result", "value": 1e400}',
    "long-integer": b'{"type": "result", "value": ' + b"1" * 5000 + b"}",
    "duplicate-keys": b'{"type": "result", "value": {"a": 1, "a": 2}}',
}


def _warnings(channel: EventChannel) -> list[str]:
    events, _progress = channel.take()
    return [d["message"] for _at, kind, d in events if d.get("level") == "warning"]


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_a_result_that_is_not_json_is_unreadable(case: str):
    channel = EventChannel(event_cap=100, result_cap=1 << 20)
    channel.feed(BAD_RESULTS[case] + b"\n")
    assert channel.result is None
    assert channel.result_unreadable
    assert any("unreadable event line" in m for m in _warnings(channel))


def test_a_later_good_result_replaces_an_unreadable_one():
    channel = EventChannel(event_cap=100, result_cap=1 << 20)
    channel.feed(BAD_RESULTS["nan"] + b'\n{"type": "result", "value": 1}\n')
    assert channel.result_unreadable is None and channel.result == "1"


@pytest.mark.parametrize(
    "line",
    [
        b'{"type": "log", "message": "x", "n": Infinity}',
        b'{"type": "output", "data": {"k": 1, "k": 2}}',
    ],
)
def test_an_event_that_is_not_json_is_refused_with_a_warning(line: bytes):
    channel = EventChannel(event_cap=100, result_cap=1 << 20)
    channel.feed(line + b"\n")
    events, _progress = channel.take()
    assert [kind for _at, kind, _d in events] == ["log"]
    assert "unreadable event line" in events[0][2]["message"]
    assert channel.result_unreadable is None


@pytest.mark.parametrize("field", ["done", "total"])
def test_a_progress_with_a_non_number_is_refused_with_a_warning(field: str):
    channel = EventChannel(event_cap=100, result_cap=1 << 20)
    channel.feed(b'{"type": "progress", "%s": "abc"}\n' % field.encode())
    events, progress = channel.take()
    assert progress is None
    assert [kind for _at, kind, _d in events] == ["log"]
    assert f"{field} is 'abc', not a number" in events[0][2]["message"]


def test_events_over_the_byte_cap_are_dropped_and_counted():
    channel = EventChannel(event_cap=1000, result_cap=1 << 20, event_bytes_cap=1000)
    line = b'{"type": "output", "data": "' + b"x" * 300 + b'"}\n'
    channel.feed(line * 10)
    events, _progress = channel.take()
    assert len(events) == 3
    assert channel.dropped == 7
    assert channel.kept_bytes <= 1000


@pytest.mark.parametrize("case", ["nan", "long-integer"])
def test_the_attempt_fails_when_its_result_is_unreadable(
    make_service, run_task, case: str
):
    source = RAW_LINE.format(line=BAD_RESULTS[case])
    name = make_service(f"bad-result-{case}", source, retry_limit=0)
    task = run_task(name, {})
    assert task.state == TaskState.FAILED, task
    assert task.error_kind == "result_unreadable"
    assert "the result is not JSON" in (task.error or "")
    assert task.result is None


def test_the_event_byte_cap_is_an_execution_key(make_engine, make_service):
    from kos_see.dispatcher import SubmitRequest

    engine = make_engine(execution={"event_bytes_cap": 2000})
    source = """
        from kos_see import service
        for _ in range(20):
            service.output("x" * 500)
    """
    name = make_service("chatty", source, retry_limit=0)
    task = engine.dispatcher.submit(SubmitRequest(service=name, input={})).task
    done = engine.wait(task.id, timeout=60)
    assert done.state == TaskState.SUCCEEDED, done
    outputs = [e for e in engine.store.events(task.id) if e.kind == "output"]
    assert 1 <= len(outputs) <= 4
    attempt = engine.store.attempts(task.id)[-1]
    assert attempt.events_dropped >= 16


def test_status_and_logs_say_how_many_events_were_dropped(
    make_engine, make_service, home, monkeypatch, capsys
):
    import sys

    from kos_see.cli import context as cli_context
    from kos_see.cli.app import main
    from kos_see.dispatcher import SubmitRequest

    engine = make_engine(execution={"event_cap": 3})
    source = """
        from kos_see import service
        for n in range(10):
            service.log(f"line {n}")
    """
    name = make_service("dropper", source, retry_limit=0)
    task = engine.dispatcher.submit(SubmitRequest(service=name, input={})).task
    assert engine.wait(task.id, timeout=60).state == TaskState.SUCCEEDED

    monkeypatch.setenv("KOS_SEE_HOME", str(home.root))
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setattr(cli_context, "configure", lambda *_a, **_k: None)
    for command in ("status", "logs"):
        monkeypatch.setattr(sys, "argv", ["kos-see", command, task.id])
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main()
        out = capsys.readouterr().out
        assert "7 events dropped" in out, (command, out)
