"""One `bridge run` per embedded database: the lock beside the SQLite file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.store.embedded_lock import DatabaseInUse, database_file, sole_process


def test_the_lock_file_is_beside_the_database_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert database_file("sqlite+aiosqlite:///bridge.db") == tmp_path / "bridge.db"
    assert database_file(f"sqlite+aiosqlite:///{tmp_path}/data/b.db") == tmp_path / "data" / "b.db"
    assert database_file("sqlite+aiosqlite://") is None
    assert database_file("sqlite+aiosqlite:///:memory:") is None


def test_a_second_holder_is_refused_with_the_first_ones_process_and_may_go_once_it_let_go(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"
    with sole_process(url):
        with pytest.raises(DatabaseInUse) as refused, sole_process(url):
            pytest.fail("two holders at once")
        assert str(refused.value).startswith(f"BRIDGE_DATABASE_URL: {tmp_path / 'bridge.db'} is in use")
        assert f"(process {os.getpid()})" in str(refused.value)
    with sole_process(url):
        pass  # let go when the first block ended
    assert (tmp_path / "bridge.db.lock").read_text() == f"{os.getpid()}\n"


def test_databases_in_files_of_their_own_do_not_share_a_lock(tmp_path: Path) -> None:
    with (
        sole_process(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}"),
        sole_process(f"sqlite+aiosqlite:///{tmp_path / 'two.db'}"),
    ):
        pass


def test_a_database_in_memory_takes_no_lock(tmp_path: Path) -> None:
    with sole_process("sqlite+aiosqlite://"), sole_process("sqlite+aiosqlite://"):
        pass


def test_sqlites_own_uri_form_names_its_file_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert database_file("sqlite+aiosqlite:///file:bridge.db?uri=true") == tmp_path / "bridge.db"
    assert database_file(f"sqlite+aiosqlite:///file:{tmp_path}/b.db?mode=rwc&uri=true") == tmp_path / "b.db"
    assert database_file("sqlite+aiosqlite:///file::memory:?cache=shared&uri=true") is None
    assert database_file("sqlite+aiosqlite:///file:shared.db?mode=memory&uri=true") is None
    # ... so two processes on one file through it are refused as through the plain form.
    with (
        sole_process("sqlite+aiosqlite:///file:bridge.db?uri=true"),
        pytest.raises(DatabaseInUse),
        sole_process(f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"),
    ):
        pytest.fail("two holders at once")
