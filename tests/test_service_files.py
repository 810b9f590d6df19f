"""A service folder holds regular files only: specials are refused, never opened."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import EngineFactory

from kos_see.dispatcher import SubmitRequest
from kos_see.errors import ManifestError
from kos_see.registry import Registry

SOURCE = "def run(inputs):\n    return 'ran'\n"


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def _fifo_behind_symlink(path: Path) -> None:
    os.mkfifo(path.with_name("real-fifo"))
    path.symlink_to("real-fifo")


def _device_symlink(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _outside_symlink(path: Path) -> None:
    outside = path.parent.parent / "outside.py"
    outside.write_text("X = 1\n")
    path.symlink_to(outside)


SPECIALS = {
    "fifo": (_fifo, "FIFO"),
    "socket": (_socket, "socket"),
    "symlink-to-fifo": (_fifo_behind_symlink, "FIFO"),
    "symlink-to-device": (_device_symlink, "leaves the service folder"),
    "symlink-outside": (_outside_symlink, "leaves the service folder"),
}


@pytest.mark.parametrize("kind", sorted(SPECIALS))
def test_add_refuses_a_special_file(make_service, registry: Registry, kind: str):
    make_special, expected = SPECIALS[kind]
    name = make_service(f"special-{kind}", SOURCE, register=False)
    folder = make_service.folder(name)
    make_special(folder / "data.bin")
    with pytest.raises(ManifestError, match=expected) as caught:
        registry.add(folder)
    assert "data.bin" in caught.value.message
    assert [r for r in registry.list() if r.name == name] == []


def test_a_manifest_that_is_a_fifo_is_refused(make_service, registry: Registry):
    name = make_service("fifo-manifest", SOURCE, register=False)
    folder = make_service.folder(name)
    (folder / "service.toml").unlink()
    os.mkfifo(folder / "service.toml")
    with pytest.raises(ManifestError, match="FIFO"):
        registry.add(folder)


def test_a_symlink_to_a_file_inside_the_folder_is_covered(
    make_service, registry: Registry
):
    name = make_service("linked", SOURCE, register=False)
    folder = make_service.folder(name)
    (folder / "alias.py").symlink_to("main.py")
    record, created = registry.add(folder)
    assert created and record.digest.startswith("sha256:")


def test_a_fifo_added_after_registration_fails_the_attempt(
    make_engine: EngineFactory, make_service
):
    name = make_service("late-fifo", SOURCE, entrypoint="main.py:run")
    idle = make_engine(serve=False)
    task = idle.dispatcher.submit(SubmitRequest(service=name, input={})).task
    os.mkfifo(make_service.folder(name) / "pipe")

    serving = make_engine(serve=True)
    done = serving.wait(task.id, timeout=60)
    assert done.state == "failed", done
    assert done.error_kind == "service_changed"
    assert "FIFO" in (done.error or "")
