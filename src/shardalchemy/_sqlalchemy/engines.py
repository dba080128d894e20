"""Private SQLAlchemy details of engines and pools: one connection per session (SQLAlchemy 2.x).

Shards that live in one database (the ``schema`` and ``tables`` placements)
are one database to the session too: every shard a session touches there
runs on one connection, in one transaction, which the session alone owns.
That is what a plain ``Session`` on that database would do, and it keeps two
sessions as isolated as two connections are, at any thread count.

SQLAlchemy has no public way to say "these engines share one connection per
session".  SQLAlchemy's ``SingletonThreadPool`` shares one per *thread*
(two sessions in a thread then share a transaction, and past its size it
closes connections other threads still use).  So each session gets copies
of the shard map's per-shard engines whose pool is a :class:`SessionPool`:
while the session holds a connection, every checkout is that one connection
(the pool's own re-entrant checkout, ``_ConnectionFairy._checkout_existing``,
which ``SingletonThreadPool`` uses per thread); when its last holder closes
it, it goes back to the shard map's pool as any connection would.  The copies
subclass ``OptionEngine`` (what ``Engine.execution_options()`` returns) to
change nothing but the pool.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.engine.base import OptionEngine

from .drivers import engine_of


class SessionPool:
    """The shard map's pool as one session sees it: one connection at a time.

    The first checkout takes a connection from the shard map's pool; while it
    is out, every further checkout (another shard of the same database) is
    that same connection, counted; when the last holder closes it, it is
    checked back in (and reset) as usual.  Everything else is the real pool's.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._connection: Any = None

    def connect(self) -> Any:
        connection = self._connection
        if connection is not None and connection._counter > 0 and connection.is_valid:
            return connection._checkout_existing()
        connection = self._connection = self._pool.connect()
        return connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class SessionEngine(OptionEngine):
    """A shard's engine, with the connections of one session's :class:`SessionPool`."""

    _session_pool: Any

    @property  # type: ignore[override]
    def pool(self) -> Any:
        return self._session_pool

    @pool.setter
    def pool(self, pool: Any) -> None:  # Engine.dispose() of a copy: the shard map's to do
        raise AttributeError("a session's shard engine shares the shard map's pool")


def one_connection_per_database(binds: Mapping[Any, Any]) -> dict[Any, Any]:
    """The binds one new session uses: shards of one engine share one connection.

    Binds that are copies of one ``Engine`` (``execution_options()`` copies,
    such as the ``schema`` and ``tables`` placements' shards, or a drop-in
    session's ``shards=``) reach one database, so the session gives them one
    connection at a time.  Other binds (a shard with an engine of its own, a
    ``Connection`` the caller passed) are returned as they are, and so are the
    binds of an in-memory SQLite database, where every connection is a
    database of its own: SQLAlchemy's pool gives each thread one, which every
    session of that thread shares.

    Costs ~1 us per shard of a shared database (a copy of its bind's template).
    """
    key = tuple(binds.items())
    plan = _plans.get(key)
    if plan is None:
        plan = _plan(binds)
        with _lock:
            if len(_plans) >= _PLANS_KEPT:
                _plans.pop(next(iter(_plans)))
            _plans[key] = plan
    if not plan:
        return dict(binds)
    chosen = dict(binds)
    for engine, templates in plan:
        shared = SessionPool(engine.pool)
        for shard, template in templates:
            copy = SessionEngine.__new__(SessionEngine)
            copy.__dict__.update(template.__dict__)
            copy._session_pool = shared
            chosen[shard] = copy
    return chosen


# The grouping of a set of binds, and one SessionEngine per shard bind to copy for each
# session: building an OptionEngine costs ~11 us (a logger, a joined event dispatch),
# copying its attributes ~1 us.  Copies share the template's event dispatch, i.e. the
# listeners of the bind's engine, as execution_options() copies do.  Bounded: a process
# that builds shard maps over and over keeps the last few.
_Plan = list[tuple[Engine, list[tuple[Any, "SessionEngine"]]]]
_plans: dict[tuple[Any, ...], _Plan] = {}
_PLANS_KEPT = 64
_lock = threading.Lock()


def _plan(binds: Mapping[Any, Any]) -> _Plan:
    by_engine: dict[int, list[Any]] = {}
    for shard, bind in binds.items():
        if isinstance(bind, Engine):
            by_engine.setdefault(id(engine_of(bind)), []).append(shard)
    plan: _Plan = []
    for shards in by_engine.values():
        engine = engine_of(binds[shards[0]])
        if len(shards) < 2 or _connection_is_database(engine):
            continue
        templates = []
        for shard in shards:
            template = SessionEngine(binds[shard], {})
            template._session_pool = None
            templates.append((shard, template))
        plan.append((engine, templates))
    return plan


def _connection_is_database(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")


def connection_group(bind: Any) -> Any:
    """What identifies the connection a session's ``bind`` runs on (shared binds: one)."""
    return bind._session_pool if isinstance(bind, SessionEngine) else bind
