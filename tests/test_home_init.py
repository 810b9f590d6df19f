"""`init` on a path that cannot be a home says why, with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kos_see.errors import HomeError
from kos_see.home import Home


def test_init_on_a_file_says_it_is_not_a_folder(tmp_path: Path):
    file = tmp_path / "plain"
    file.write_text("data\n")
    with pytest.raises(HomeError, match="is not a folder"):
        Home(file).init()
    assert file.read_text() == "data\n"


def test_init_under_a_file_is_a_home_error(tmp_path: Path):
    file = tmp_path / "plain"
    file.write_text("data\n")
    with pytest.raises(HomeError, match="cannot create an engine home"):
        Home(file / "home").init()


def test_the_cli_exits_2_for_a_file_as_home(tmp_path: Path):
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0\n")
    done = subprocess.run(
        [sys.executable, "-m", "kos_see.cli", "--home", str(file), "init"],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "is not a folder" in done.stderr
    assert "internal error" not in done.stderr
