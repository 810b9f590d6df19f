"""The gRPC interface over a real server on loopback, driven with grpcio stubs."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kos_see.api.grpc import engine_pb2, engine_pb2_grpc
from kos_see.security.envelope import sign_request

SLOW = """
    import time
    from kos_see import service
    for i in range(3):
        service.progress(i + 1, 3)
        time.sleep(0.2)
    service.result({"done": True})
"""


@pytest.fixture
def channel(api):
    with grpc.insecure_channel(api.addresses.grpc) as chan:
        yield chan


def _signed(api, action, fields, principal="alice"):
    envelope = sign_request(api.keys[principal], principal, action, fields)
    return json.dumps(envelope.to_dict())


def _token(api):
    return (("authorization", f"Bearer {api.client().token()}"),)


def test_submit_get_watch_and_list_services(api, channel, make_service):
    make_service("slow", SLOW, retry_limit=0)
    stub = engine_pb2_grpc.EngineStub(channel)

    reply = stub.Submit(
        engine_pb2.SignedRequest(
            envelope_json=_signed(api, "submit", {"service": "slow", "input": {}})
        )
    )
    assert reply.created and reply.task.tenant == "acme"
    task_id = reply.task.id

    events = list(
        stub.Watch(engine_pb2.WatchRequest(task_id=task_id), metadata=_token(api))
    )
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert "progress" in {e.kind for e in events}
    last = json.loads(events[-1].data_json)
    assert last["kind"] == "state" and last["state"] == "succeeded"

    # Resuming after an event sends only the later ones.
    later = list(
        stub.Watch(
            engine_pb2.WatchRequest(task_id=task_id, after_id=events[1].id),
            metadata=_token(api),
        )
    )
    assert [e.id for e in later] == [e.id for e in events[2:]]

    task = stub.Get(engine_pb2.TaskRef(task_id=task_id), metadata=_token(api))
    assert task.state == "succeeded"
    assert json.loads(task.result_json) == {"done": True}

    services = stub.ListServices(engine_pb2.ListServicesRequest(), metadata=_token(api))
    assert [(s.name, s.version) for s in services.services] == [("slow", "1.0.0")]


def test_cancel_with_a_signed_envelope(api, channel, make_service):
    make_service("sleepy", "import time\ntime.sleep(30)\n", retry_limit=0)
    stub = engine_pb2_grpc.EngineStub(channel)
    task_id = stub.Submit(
        engine_pb2.SignedRequest(
            envelope_json=_signed(api, "submit", {"service": "sleepy"})
        )
    ).task.id
    stub.Cancel(
        engine_pb2.SignedRequest(
            envelope_json=_signed(api, "cancel", {"task_id": task_id})
        )
    )
    ended = list(
        stub.Watch(engine_pb2.WatchRequest(task_id=task_id), metadata=_token(api))
    )
    assert json.loads(ended[-1].data_json)["state"] == "cancelled"


def test_errors_map_to_status_codes_with_the_engine_error(api, channel):
    stub = engine_pb2_grpc.EngineStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Get(engine_pb2.TaskRef(task_id="f" * 24), metadata=_token(api))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    error = dict(caught.value.trailing_metadata())["kos-see-error"]
    assert json.loads(error)["error"] == "unknown_task"

    with pytest.raises(grpc.RpcError) as caught:
        stub.Get(engine_pb2.TaskRef(task_id="x"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as caught:
        stub.Submit(
            engine_pb2.SignedRequest(
                envelope_json=_signed(api, "submit", {"service": "missing"})
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "missing" in caught.value.details()

    with pytest.raises(grpc.RpcError) as caught:
        stub.Submit(engine_pb2.SignedRequest(envelope_json="{not json"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_standard_health_service_answers_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", "kos_see.v1.Engine"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_the_committed_generated_code_matches_the_proto(tmp_path):
    """scripts/proto regenerates exactly the committed files."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [str(root / "scripts" / "proto"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = root / "src" / "kos_see" / "api" / "grpc"
    for name in ("engine_pb2.py", "engine_pb2.pyi", "engine_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name
