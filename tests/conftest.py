"""Shared pytest fixtures: throwaway databases on SQLite, PostgreSQL and MariaDB.

Fixtures (all function scope; every database they create is dropped at teardown):

- ``make_database(kind) -> URL``: a factory; each call creates a new, empty database of
  ``kind`` ("sqlite", "postgresql" or "mariadb") and returns its URL. Call it N times for N
  shards.
- ``postgresql_url -> URL`` / ``mariadb_url -> URL``: one fresh database on that server.
- ``backend -> str``: parametrized over "sqlite", "postgresql", "mariadb" (the server params
  carry the ``postgresql``/``mariadb`` marks), for ``url = make_database(backend)``.
- ``deployment -> Deployment``: the weather models deployed for (``backend``, ``placement``),
  tables created, no rows; ``placement`` is parametrized over the three placements, and the
  deployments are built once per test module (``pool``) and emptied between tests.

URLs are ``sqlalchemy.engine.URL`` objects: pass them to ``create_engine`` as they are. Do not
``str()`` them, that masks the password; use ``url.render_as_string(hide_password=False)``.
Tests should dispose the engines they create; teardown disconnects stragglers regardless.

Servers come from ``SHARDALCHEMY_TEST_POSTGRESQL_URL`` / ``SHARDALCHEMY_TEST_MARIADB_URL``
(defaults: the local servers). An unreachable server skips the test, or fails it when
``CI=true``. Connection and creation logic lives in ``_servers.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _servers import (
    SERVER_KINDS,
    Backend,
    DatabaseFactory,
    MakeDatabase,
    ServerKind,
    decide_unavailable,
    dispose_admin_engines,
    probe_server,
)
from models_weather import PLACEMENTS, Deployment, DeploymentPool
from sqlalchemy.engine import URL


def require_server(kind: ServerKind) -> None:
    """Skip (or, under CI, fail) the current test unless the ``kind`` server is reachable."""
    reason = probe_server(kind)
    if reason is None:
        return
    outcome = decide_unavailable(kind, reason, os.environ)
    if outcome.action == "fail":
        pytest.fail(outcome.message, pytrace=False)
    pytest.skip(outcome.message)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use ``postgresql_url``/``mariadb_url`` with the server they need."""
    for item in items:
        fixture_names = getattr(item, "fixturenames", ())
        for kind in SERVER_KINDS:
            if f"{kind}_url" in fixture_names:
                item.add_marker(getattr(pytest.mark, kind))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close the admin connections used to create and drop test databases."""
    dispose_admin_engines()


@pytest.fixture
def make_database(tmp_path: Path) -> Iterator[MakeDatabase]:
    """Return ``make(kind) -> URL`` that creates a new empty database per call.

    SQLite databases are files in ``tmp_path``; server databases are named
    ``shardalchemy_test_<8 hex>``. All are dropped when the test ends.
    """
    factory = DatabaseFactory(sqlite_dir=tmp_path)

    def make(kind: Backend) -> URL:
        if kind in SERVER_KINDS:
            require_server(kind)
        return factory.create(kind)

    yield make
    factory.drop_all()


@pytest.fixture
def postgresql_url(make_database: MakeDatabase) -> URL:
    """Return the URL of a fresh PostgreSQL database, dropped at teardown."""
    return make_database("postgresql")


@pytest.fixture
def mariadb_url(make_database: MakeDatabase) -> URL:
    """Return the URL of a fresh MariaDB database, dropped at teardown."""
    return make_database("mariadb")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Return each backend name in turn; skips (fails under CI) if its server is down."""
    kind: Backend = request.param
    if kind != "sqlite":
        require_server(kind)
    return kind


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploymentPool]:
    """The weather deployments of one test module, reused by its tests and dropped after it."""
    pool = DeploymentPool(tmp_path_factory.mktemp("shards"))
    yield pool
    pool.close()


@pytest.fixture(params=PLACEMENTS)
def placement(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def deployment(pool: DeploymentPool, backend: str, placement: str) -> Deployment:
    """Tables created on every shard, no rows."""
    deployment = pool.get(backend, placement)
    assert deployment.total_rows() == 0
    return deployment
