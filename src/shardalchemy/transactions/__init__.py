"""Commits across shards: atomic (two-phase, with a decision log and recovery) or best effort.

:func:`install` hooks a session class into SQLAlchemy's public events: ``after_begin``
notes each connection a root transaction begins (one per database: the ``schema`` and
``tables`` placements run every shard of a database on one connection, so their commit is
one local commit), and the root transaction's ``before_commit`` flushes the session, as
its commit would, and hands the commit of every connection to
:class:`~shardalchemy.transactions.coordinator.CommitState`; SQLAlchemy's own COMMITs of
those connections then find nothing left to commit.  No engine or connection event is
used: one would make every statement of every connection dispatch events (~56 more
function calls per point SELECT, ``bench/bench_routing_calls.py``).
See :mod:`.coordinator` for the protocol and :mod:`.recovery` for in-doubt transactions.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from sqlalchemy import event

from .._sqlalchemy import sessions
from .._sqlalchemy.drivers import engine_of
from .coordinator import MODES, CommitState, check_mode
from .recovery import InDoubt, Recoverer, find_in_doubt, recover

__all__ = ["MODES", "InDoubt", "Recoverer", "check_mode", "install", "recover", "recoverer_for"]


CHECK_EVERY_SECONDS = 10.0  # how often a session's first use of a shard looks for in-doubt ones
_checked: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
_recoverers: dict[tuple[Any, ...], Recoverer] = {}
_recoverers_lock = threading.Lock()


def recoverer_for(binds: Mapping[str, Any]) -> Recoverer:
    """The process's background recoverer of ``binds`` (started at its first use)."""
    key = tuple(sorted((str(shard), id(engine_of(bind))) for shard, bind in binds.items()))
    with _recoverers_lock:
        found = _recoverers.get(key)
        if found is None:
            found = _recoverers[key] = Recoverer(binds)
        return found


def _before_commit(session: Any) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT's release: the root transaction commits later
    # what the commit does next, before it commits the connections: the flush begins the
    # transactions of the shards it writes to
    for _ in range(_FLUSHES_AT_COMMIT):
        if sessions.is_clean(session):
            break
        session.flush()
    state = session._commit_state
    if state is None or state.started or not state.spans_databases():
        return  # nothing begun, or one database: SQLAlchemy's own COMMIT, nothing added
    state.commit()


_FLUSHES_AT_COMMIT = 100  # as SQLAlchemy's commit, which then raises FlushError


def _after_begin(session: Any, transaction: Any, connection: Any) -> None:
    engine = engine_of(connection.engine)
    state = session._commit_state
    if state is None:
        state = session._commit_state = CommitState(session.commit_mode, session.in_doubt_found)
    state.connections[connection] = session.shard_of_bind(connection.engine)
    if engine.dialect.name == "postgresql":
        last = _checked.get(engine)
        now = time.monotonic()
        if last is None or now - last > CHECK_EVERY_SECONDS:
            _checked[engine] = now
            session.check_in_doubt(engine)


def _after_transaction_end(session: Any, transaction: Any) -> None:
    if transaction.parent is not None:
        return
    session._commit_state = None


def install(session_class: type) -> None:
    """Listen to ``session_class``'s events (once, at import: no cost per session)."""
    event.listen(session_class, "after_begin", _after_begin)
    event.listen(session_class, "before_commit", _before_commit)
    event.listen(session_class, "after_transaction_end", _after_transaction_end)


def in_doubt_on(engine: Any) -> bool:
    """Whether ``engine``'s database holds prepared transactions of ours (own connection)."""
    found, _ = find_in_doubt({"shard": engine})
    return bool(found)
