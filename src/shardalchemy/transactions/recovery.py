"""Recovery of in-doubt transactions: prepared participants whose coordinator is gone.

A prepared participant (gid ``shardalchemy:<id>:<decider>:<shard>``) is committed if the
decider's ``shardalchemy_decisions`` holds the transaction's row, and rolled back if not,
and only once the recoverer holds the transaction's advisory lock on the decider: the
coordinator's decider transaction holds it from before the first PREPARE until its
commit, so a live coordinator is never raced.  The recoverer keeps the lock until every
participant is resolved, so two recoverers resolve each transaction once.

Decision rows outlive their transaction a while (the coordinator does not pay a round
trip to delete them); :func:`recover` deletes those older than ``keep_decisions`` seconds
that no participant of any shard still holds, and only when it could list every shard.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine

from .._sqlalchemy.drivers import engine_of
from .._sqlalchemy.failures import is_connection_lost
from ..errors import COMMITTED, ROLLED_BACK
from . import decisions
from .decisions import TABLE, PreparedName

log = logging.getLogger("shardalchemy.transactions")

ALIVE = "coordinator alive"
NO_DECIDER = "decider unknown"


@dataclasses.dataclass
class InDoubt:
    """One transaction found prepared on some shard, and what recovery did with it."""

    transaction_id: str
    decider: str
    prepared: dict[str, str]  # shard -> gid
    outcome: str | None = None  # committed | rolled back | coordinator alive | ...

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _postgresql(binds: Mapping[str, Any]) -> dict[str, Engine]:
    engines = {shard: engine_of(bind) for shard, bind in binds.items()}
    return {shard: e for shard, e in engines.items() if e.dialect.name == "postgresql"}


def _retrying(work: Any, *arguments: Any) -> Any:
    """``work(*arguments)``, again on a new connection if the pooled one was found dead."""
    for attempt in range(3):
        try:
            return work(*arguments)
        except Exception as error:
            if attempt == 2 or not is_connection_lost(error):
                raise
    raise AssertionError("unreachable")


def prepared_on(engine: Engine) -> list[PreparedName]:
    """Our prepared transactions in ``engine``'s database."""
    return list(_retrying(_prepared_on, engine))


def _prepared_on(engine: Engine) -> list[PreparedName]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT gid FROM pg_prepared_xacts"
            " WHERE gid LIKE 'shardalchemy:%%' AND database = current_database()"
        ).all()
    names = [decisions.parse_gid(row[0]) for row in rows]
    return [name for name in names if name is not None]


def find_in_doubt(binds: Mapping[str, Any]) -> tuple[dict[str, InDoubt], bool]:
    """Every transaction prepared on some shard, and whether every shard could be listed."""
    found: dict[str, InDoubt] = {}
    complete = True
    for shard, engine in _postgresql(binds).items():
        try:
            names = prepared_on(engine)
        except Exception as error:
            log.warning("recovery cannot list shard %s: %s", shard, error)
            complete = False
            continue
        for name in names:
            entry = found.setdefault(
                name.transaction_id, InDoubt(name.transaction_id, name.decider, {})
            )
            entry.prepared[shard] = name.gid
    return found, complete


def _finish(engine: Engine, gid: str, commit: bool) -> None:
    _retrying(_finish_once, engine, gid, commit)


def _finish_once(engine: Engine, gid: str, commit: bool) -> None:
    verb = "COMMIT" if commit else "ROLLBACK"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        try:
            connection.exec_driver_sql(f"{verb} PREPARED '{gid}'")
        except Exception as error:
            if "does not exist" not in str(error):  # finished by its coordinator meanwhile
                raise


def resolve(binds: Mapping[str, Any], entry: InDoubt) -> InDoubt:
    """Commit or roll back ``entry``'s prepared participants, if its coordinator is gone."""
    return _retrying(_resolve, binds, entry)  # type: ignore[no-any-return]


def _resolve(binds: Mapping[str, Any], entry: InDoubt) -> InDoubt:
    engines = _postgresql(binds)
    decider = engines.get(entry.decider)
    if decider is None:
        entry.outcome = NO_DECIDER
        return entry
    with decider.connect() as connection:
        key = decisions.lock_key(entry.transaction_id)
        if not connection.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({key})").scalar():
            entry.outcome = ALIVE
            connection.rollback()
            return entry
        has_table = connection.exec_driver_sql(f"SELECT to_regclass('{TABLE}')").scalar()
        committed = bool(has_table) and bool(
            connection.exec_driver_sql(
                f"SELECT 1 FROM {TABLE} WHERE transaction_id = '{entry.transaction_id}'"
            ).scalar()
        )
        for shard, gid in entry.prepared.items():
            _finish(engines[shard], gid, committed)
        entry.outcome = COMMITTED if committed else ROLLED_BACK
        connection.commit()  # the lock goes only now: one recoverer per transaction
    return entry


def collect_decisions(binds: Mapping[str, Any], holding: set[str], older_than: float) -> int:
    """Delete decision rows older than ``older_than`` seconds that no participant holds."""
    deleted = 0
    for engine in _postgresql(binds).values():
        with engine.connect() as connection:
            if not connection.exec_driver_sql(f"SELECT to_regclass('{TABLE}')").scalar():
                continue
            rows = connection.exec_driver_sql(
                f"SELECT transaction_id FROM {TABLE}"
                f" WHERE decided_at < now() - interval '{float(older_than)} seconds'"
            ).all()
            old = [row[0] for row in rows if row[0] not in holding]
            if old:
                listed = ", ".join(f"'{decisions.parse_hex(tid)}'" for tid in old)
                deleted += connection.exec_driver_sql(
                    f"DELETE FROM {TABLE} WHERE transaction_id IN ({listed})"
                ).rowcount
            connection.commit()
    return deleted


def recover(
    binds: Mapping[str, Any], *, resolve_them: bool = True, keep_decisions: float = 300.0
) -> list[InDoubt]:
    """Find (and with ``resolve_them``, resolve) our in-doubt transactions on ``binds``.

    ``binds`` maps shard names to engines (``shard_map.binds()``).  Returns one
    :class:`InDoubt` per transaction found, ``outcome`` saying what became of it
    (``None`` when only listing).
    """
    found, complete = find_in_doubt(binds)
    if not resolve_them:
        return list(found.values())
    for entry in found.values():
        try:
            resolve(binds, entry)
        except Exception as error:
            log.warning("recovery of transaction %s failed: %s", entry.transaction_id, error)
            entry.outcome = f"failed: {error}"
    if complete:
        try:
            collect_decisions(binds, set(found), keep_decisions)
        except Exception as error:
            log.warning("deleting old decisions failed: %s", error)
    return list(found.values())


class Recoverer:
    """A background thread that recovers a shard map's in-doubt transactions.

    At most one per fleet works at a time: each round first takes a session-level advisory
    lock on the first PostgreSQL shard (other processes' recoverers skip the round).
    :meth:`wake` asks for a round now (a commit left a participant in doubt).
    """

    FLEET_LOCK = 0x5A5A_2BC0_0000_0001

    def __init__(self, binds: Mapping[str, Any], interval: float = 30.0) -> None:
        self.binds = dict(binds)
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.rounds = 0
        self._thread = threading.Thread(
            target=self._run, name="shardalchemy-recoverer", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def round(self) -> list[InDoubt] | None:
        """One round, if this process holds the fleet's lock; ``None`` if another does."""
        engines = _postgresql(self.binds)
        if not engines:
            return None
        first = next(iter(engines.values()))
        with first.connect() as connection:
            got = connection.exec_driver_sql(
                f"SELECT pg_try_advisory_lock({self.FLEET_LOCK})"
            ).scalar()
            if not got:
                return None
            try:
                return recover(self.binds)
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({self.FLEET_LOCK})")
                connection.commit()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            time.sleep(0.2)  # let the coordinator that woke us finish its own round trips
            try:
                self.round()
                self.rounds += 1
            except Exception as error:
                log.warning("recoverer round failed: %s", error)
