"""Only one engine serves a store, whatever path or URL a second one uses."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from conftest import EngineFactory, merged_config

from kos_see.engine import Engine
from kos_see.errors import EngineAlreadyServing
from kos_see.home import Home, resolve_home


def _second_engine(home: Home, **store: str) -> Engine:
    config = merged_config(store=store) if store else merged_config()
    return Engine.open(home, config=config)


@pytest.fixture
def served(make_engine: EngineFactory) -> Engine:
    return make_engine(serve=True)


def _assert_refused(other: Engine) -> None:
    try:
        with pytest.raises(EngineAlreadyServing, match="already serves"):
            other.serve()
        assert other.pool is None
    finally:
        other.close()


def test_a_symlinked_home_is_refused(served: Engine, tmp_path: Path):
    link = tmp_path / "link"
    link.symlink_to(served.home.root)
    _assert_refused(_second_engine(Home(link)))


def test_a_dotdot_home_is_refused(served: Engine):
    root = served.home.root
    _assert_refused(_second_engine(Home(root / ".." / root.name)))


def test_resolve_home_resolves_symlinks_and_dotdot(home: Home, tmp_path: Path):
    link = tmp_path / "link"
    link.symlink_to(home.root)
    assert resolve_home(link).root == home.root.resolve()
    assert resolve_home(f"{home.root}/../{home.root.name}").root == home.root.resolve()


def test_another_home_on_the_same_database_is_refused(served: Engine, tmp_path: Path):
    other = Home(tmp_path / "other")
    assert other.init()
    url = f"sqlite:///{served.home.database_path}"
    _assert_refused(_second_engine(other, url=url))


def test_the_lock_is_released_when_the_engine_stops(served: Engine):
    served.stop()
    again = _second_engine(served.home)
    try:
        again.serve()
        assert again.pool is not None
    finally:
        again.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is for serving as root")
def test_serving_as_root_warns_that_process_limits_do_nothing(
    make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="kos_see.engine"):
        make_engine(serve=True)
    warned = [r for r in caplog.records if r.action == "process_limit_ineffective"]
    assert len(warned) == 1
    assert "limits.processes" in warned[0].getMessage()


def test_a_server_database_takes_no_file_lock(tmp_path) -> None:
    # Many engines serve one PostgreSQL database at once: no lock file for it,
    # and never one named after the current folder.
    from kos_see.serving_lock import database_file

    assert database_file("postgresql://root@127.0.0.1:5432/test") is None
    assert database_file(f"sqlite:///{tmp_path}/see.db") == (tmp_path / "see.db")
