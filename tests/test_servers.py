"""Tests for the database fixtures in conftest.py and the helpers in _servers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from _servers import (
    DATABASE_NAME_PREFIX,
    DEFAULT_URLS,
    URL_ENV_VARS,
    Backend,
    DatabaseFactory,
    MakeDatabase,
    ServerKind,
    decide_unavailable,
    server_database_exists,
    server_url,
)
from sqlalchemy.engine import URL

SERVER_KINDS: list[ServerKind] = ["postgresql", "mariadb"]


def write_and_read(url: URL) -> list[tuple[int, str]]:
    """Create a table at ``url``, insert two rows and return them, ordered."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
            connection.execute(
                sa.text("INSERT INTO item (id, name) VALUES (:id, :name)"),
                [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}],
            )
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, name FROM item ORDER BY id"))
            return [(row.id, row.name) for row in rows]
    finally:
        engine.dispose()


def table_names(url: URL) -> list[str]:
    """Return the table names in the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        return sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", SERVER_KINDS)
@pytest.mark.parametrize("environ", [{}, {"CI": ""}, {"CI": "false"}, {"CI": "0"}])
def test_unreachable_server_skips_outside_ci(kind: ServerKind, environ: dict[str, str]) -> None:
    outcome = decide_unavailable(kind, "connection refused", environ)
    assert outcome.action == "skip"
    assert URL_ENV_VARS[kind] in outcome.message
    assert "connection refused" in outcome.message


@pytest.mark.parametrize("kind", SERVER_KINDS)
@pytest.mark.parametrize("ci", ["true", "TRUE", "1", "yes"])
def test_unreachable_server_fails_under_ci(kind: ServerKind, ci: str) -> None:
    outcome = decide_unavailable(kind, "connection refused", {"CI": ci})
    assert outcome.action == "fail"
    assert "connection refused" in outcome.message


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_server_url_comes_from_env_var_or_default(kind: ServerKind) -> None:
    custom = "postgresql+asyncpg://someone:secret@db.example:6543/other"
    assert server_url(kind, {URL_ENV_VARS[kind]: custom}) == sa.make_url(custom)
    assert server_url(kind, {}) == sa.make_url(DEFAULT_URLS[kind])


def test_postgresql_url_is_a_fresh_writable_database(postgresql_url: URL) -> None:
    assert postgresql_url.database is not None
    assert postgresql_url.database.startswith(DATABASE_NAME_PREFIX)
    assert write_and_read(postgresql_url) == [(1, "a"), (2, "b")]


def test_mariadb_url_is_a_fresh_writable_database(mariadb_url: URL) -> None:
    assert mariadb_url.database is not None
    assert mariadb_url.database.startswith(DATABASE_NAME_PREFIX)
    assert write_and_read(mariadb_url) == [(1, "a"), (2, "b")]


def test_make_database_gives_distinct_databases(
    backend: Backend, make_database: MakeDatabase
) -> None:
    urls = [make_database(backend) for _ in range(4)]
    assert len({url.database for url in urls}) == 4
    assert write_and_read(urls[0]) == [(1, "a"), (2, "b")]
    assert table_names(urls[0]) == ["item"]
    for other in urls[1:]:
        assert table_names(other) == []


def test_drop_all_drops_databases_still_in_use(backend: Backend, tmp_path: Path) -> None:
    # A test that forgets to dispose its engine, mid-transaction, must not hang teardown.
    factory = DatabaseFactory(sqlite_dir=tmp_path)
    url = factory.create(backend)
    write_and_read(url)
    engine = sa.create_engine(url)
    connection = engine.connect()
    connection.execute(sa.text("SELECT * FROM item")).all()  # holds a lock on MariaDB
    try:
        factory.drop_all()
    finally:
        connection.invalidate()
        engine.dispose()
    assert url.database is not None
    if backend == "sqlite":
        assert not Path(url.database).exists()
    else:
        assert not server_database_exists(backend, url.database)


def test_backend_param_carries_server_mark(request: pytest.FixtureRequest, backend: str) -> None:
    marks = {mark.name for mark in request.node.iter_markers()}
    assert (backend in marks) == (backend != "sqlite")


def test_unknown_backend_is_rejected(make_database: MakeDatabase) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        make_database("oracle")  # type: ignore[arg-type]
