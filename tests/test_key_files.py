"""Key files made by racing writers: every one reads the same complete key."""

from __future__ import annotations

import threading
from pathlib import Path

from kos_see.security.keys import key_id, load_or_create


def test_threads_racing_to_make_the_engine_key_all_read_one_key(
    tmp_path: Path,
) -> None:
    # Engines in one process share its pid: their temporary files must not
    # collide, or one writer removes the file another is about to link.
    for round_ in range(20):
        path = tmp_path / f"round-{round_}" / "engine.key"
        gate = threading.Barrier(8)
        ids: list[str] = []
        errors: list[BaseException] = []

        def make(ids=ids, errors=errors, gate=gate, path=path) -> None:
            gate.wait()
            try:
                ids.append(key_id(load_or_create(path).public))
            except BaseException as exc:  # reported below, with the others
                errors.append(exc)

        threads = [threading.Thread(target=make) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        assert len(ids) == 8 and len(set(ids)) == 1, ids
        assert sorted(p.name for p in path.parent.iterdir()) == [
            "engine.key",
            "engine.pub",
        ]
