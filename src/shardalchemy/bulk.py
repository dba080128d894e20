"""Bulk writes routed row by row: INSERT and UPDATE by primary key, at bulk speed.

SQLAlchemy's sharding extension refuses every bulk path; here each row goes to
the shard its shard key (its parent's, for a follower, or its shard-carrying
ID) selects, rows are grouped per shard, and each shard gets one executemany
of its rows (the driver's batch path: psycopg's pipeline, ``insertmanyvalues``
for RETURNING).  It covers ``session.execute(insert(Model), rows)`` (with and
without RETURNING), ``session.execute(update(Model), rows)`` by primary key,
single- and multi-row ``insert(Model).values(...)``, Core ``insert(table)``
executemany, and the legacy ``bulk_save_objects`` / ``bulk_insert_mappings`` /
``bulk_update_mappings``.

A statement is all or nothing: the rows of a batch (a list is one batch; an
iterator is read ``bulk_batch_size`` rows at a time) are all routed before any
is sent, and each shard's rows run inside a SAVEPOINT kept until the whole
statement is done, so a row without a shard, or one the database refuses,
undoes the statement on every shard and the session stays usable.  The error
names the caller's index of the row (for a refused row found by bisecting that
shard's batch), the shard and the reason.  Shards are written one after another
unless the execution option ``bulk_concurrency`` allows several at once.

Example::

    session.execute(insert(WeatherLocation), [
        {"continent": "Asia", "city": "Tokyo"},      # -> shard asia
        {"continent": "Europe", "city": "London"},   # -> shard europe
    ])
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, exc, inspect, select, tuple_
from sqlalchemy.engine import IteratorResult
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import Mapper, ORMExecuteState

from . import _compat
from .errors import (
    BulkWriteError,
    MissingParentError,
    RoutingError,
    ShardingError,
    ShardKeyChangeError,
)
from .ids.columns import generator_of
from .models import FollowRule, KeyRule, Rule

if TYPE_CHECKING:
    from .session import ShardedSession

DEFAULT_CONCURRENCY = 1
"""Shards written at once by a bulk statement (execution option ``bulk_concurrency``).

One at a time by default: measured on a 2-core machine with local servers,
writing 4 shards from 4 threads ran at 0.6x the speed of one after another
(the client's Python work holds the GIL, and client and servers share the
cores).  Raise it for shards on remote servers, where each batch mostly
waits on the network.
"""

CONCURRENT_MIN_ROWS = 1_000
"""Below this many rows in a batch, shards are written one after another."""

DEFAULT_BATCH_SIZE = 10_000
"""Rows taken at a time from an iterator of rows (execution option ``bulk_batch_size``)."""

_MISSING = object()

# The shard a bulk write of this thread is sending rows to.  SQLAlchemy's bulk
# code asks the session for "the" connection of a mapper, without a shard; the
# session answers from here (see ShardedSession.get_bind / connection_callable).
_WRITING_TO: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "shardalchemy_bulk_shard", default=None
)


def shard_being_written(session: Any) -> Any | None:
    """The shard ``session`` is writing a bulk batch to in this thread, if any."""
    current = _WRITING_TO.get()
    return current[1] if current is not None and current[0] is session else None


@contextlib.contextmanager
def writing_to(session: Any, shard: Any) -> Iterator[None]:
    """Within the block, ``session``'s shard-less connection requests go to ``shard``."""
    token = _WRITING_TO.set((session, shard))
    try:
        yield
    finally:
        _WRITING_TO.reset(token)


def _about_row(error: ShardingError, index: int, label: str) -> ShardingError:
    """``error``, told that it concerns row ``index`` of the statement ``label``."""
    error.row_index = index
    if error.args and isinstance(error.args[0], str):
        error.args = (f"row {index} of {label}: {error.args[0]}", *error.args[1:])
    return error


def _lookup_names(mapper: Mapper[Any] | None, column: Any) -> tuple[str, ...]:
    """The keys a row may give ``column``'s value under: attribute name, column key."""
    names = []
    if mapper is not None:
        prop = mapper.get_property_by_column(column)
        names.append(prop.key)
    names.append(str(column.key))
    return tuple(dict.fromkeys(names))


def _value(row: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return _MISSING


def _scalar_default(column: Any) -> Any:
    default = getattr(column, "default", None)
    if default is not None and getattr(default, "is_scalar", False):
        return default.arg
    return _MISSING


class RowRouter:
    """Chooses the shard of each row written to one model or table.

    Built once per statement; parents looked up for followers are cached, so
    a batch of rows with a few parents costs a few lookups.
    """

    def __init__(
        self,
        session: ShardedSession,
        target: Any,
        label: str,
        explicit: tuple[Any, str] | None = None,
    ) -> None:
        assert session.rules is not None and session.shard_map is not None
        self.session = session
        self.label = label
        self.explicit = explicit
        self.mapper: Mapper[Any] | None = target if isinstance(target, Mapper) else None
        self.rule: Rule | None = (
            session.rules.for_mapper(target) if self.mapper else session.rules.for_table(target)
        )
        self.name = self.mapper.class_.__name__ if self.mapper else str(target.name)
        self._parents: dict[tuple[Any, ...], Any] = {}
        self._key_names: tuple[str, ...] = ()
        self._shard: Callable[[Mapping[str, Any]], Any]
        rule = self.rule
        if rule is None:
            if explicit is not None:
                fixed = explicit[0]
            elif session.shard_map.placement == "tables":
                fixed = session.shard_names[0]  # one table, reached through any shard
            else:
                raise RoutingError(
                    f"{label}: {self.name} is not sharded and every shard has its own "
                    f"{self.name} table; pin the statement with set_shard_id(...) or "
                    "bind_arguments={'shard_id': ...}"
                )
            self._shard = lambda row: fixed
        elif isinstance(rule, KeyRule):
            self._shard = self._key_router(rule)
        else:
            self._shard = self._follower_router(rule)

    def shard_of(self, index: int, row: Mapping[str, Any]) -> Any:
        """The shard of the caller's row number ``index``; raises naming the row."""
        try:
            shard = self._shard(row)
        except ShardingError as error:
            raise _about_row(error, index, self.label) from error.__cause__
        if self.explicit is not None and shard != self.explicit[0]:
            raise _about_row(
                RoutingError(
                    f"{self.name} belongs on shard {shard!r}, but the statement is pinned to "
                    f"{self.explicit[0]!r} ({self.explicit[1]}); send it without the pin, or "
                    "fix the row"
                ),
                index,
                self.label,
            )
        return shard

    def shards_of(self, offset: int, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The shard of each row of a batch whose first row is the caller's ``offset``.

        The same answers as :meth:`shard_of` row by row, in one loop for the
        common case (a shard key given under one name, a strategy that knows
        the value); any other row takes :meth:`shard_of`, which explains.
        """
        rule = self.rule
        if not isinstance(rule, KeyRule) or len(self._key_names) != 1:
            return [self.shard_of(offset + i, row) for i, row in enumerate(rows)]
        (name,) = self._key_names
        shard_for = rule.strategy.shard_for
        pinned = self.explicit[0] if self.explicit is not None else None
        shards: list[Any] = []
        append = shards.append
        for i, row in enumerate(rows):
            value = row.get(name)
            shard = shard_for(value) if value is not None else None
            if shard is None or (pinned is not None and shard != pinned):
                shard = self.shard_of(offset + i, row)  # raises, naming the row
            append(shard)
        return shards

    def _key_router(self, rule: KeyRule) -> Callable[[Mapping[str, Any]], Any]:
        names = self._key_names = _lookup_names(self.mapper, rule.column)
        default = _scalar_default(rule.column)
        strategy = rule.strategy

        def shard(row: Mapping[str, Any]) -> Any:
            value = _value(row, names)
            if value is _MISSING:
                value = None if default is _MISSING else default
            found = strategy.shard_for(value) if value is not None else None
            # shard_for_value() raises the clear error for a missing or unknown key
            return found if found is not None else rule.shard_for_value(value)

        return shard

    def _follower_router(self, rule: FollowRule) -> Callable[[Mapping[str, Any]], Any]:
        relationship = rule.relationship
        pairs = list(relationship.local_remote_pairs or ())
        locals_ = [_lookup_names(self.mapper, local) for local, _ in pairs]
        remotes = [_compat.plain(remote) for _, remote in pairs]
        parent = rule.parent
        parent_mapper = relationship.mapper
        direct: Callable[[Any], Any] | None = None
        if (
            len(pairs) == 1
            and isinstance(parent, KeyRule)
            and _compat.plain(parent.column) is remotes[0]
        ):
            direct = parent.strategy.shard_for  # the foreign key is the parent's shard key
        if direct is None and len(pairs) == 1:
            generator = generator_of(remotes[0])
            if generator is not None and getattr(generator, "encodes_shard", False):
                direct = generator.shard_of  # the parent's ID carries its shard

        def shard(row: Mapping[str, Any]) -> Any:
            values = tuple(_value(row, names) for names in locals_)
            if any(value is _MISSING or value is None for value in values):
                raise MissingParentError(
                    f"{rule.name}.{relationship.key} is not given (its foreign key "
                    f"{', '.join(names[-1] for names in locals_)}); a {rule.name} lives on its "
                    f"{parent_mapper.class_.__name__}'s shard, so it needs one",
                    model=rule.name,
                    relationship=relationship.key,
                )
            if direct is not None:
                found = direct(values[0])
                if found is not None:
                    return found
            return self._parent_shard(values, remotes, rule)

        return shard

    def _parent_shard(self, values: tuple[Any, ...], remotes: list[Any], rule: FollowRule) -> Any:
        """The shard of the parent whose referenced columns hold ``values`` (looked up once)."""
        try:
            return self._parents[values]
        except KeyError:
            pass
        session = self.session
        parent_mapper = rule.relationship.mapper
        primary_key = [_compat.plain(column) for column in parent_mapper.primary_key]
        with session.no_autoflush:
            if len(remotes) == len(primary_key) and set(remotes) == set(primary_key):
                by_column = dict(zip(remotes, values, strict=True))
                parent = session.get(parent_mapper, [by_column[c] for c in primary_key])
            else:
                criteria = and_(*(c == v for c, v in zip(remotes, values, strict=True)))
                parent = session.scalars(select(parent_mapper).where(criteria)).first()
        if parent is None:
            raise MissingParentError(
                f"{rule.name}.{rule.relationship.key} refers to "
                f"{parent_mapper.class_.__name__} {values!r}, which is on no shard",
                model=rule.name,
                relationship=rule.relationship.key,
            )
        shard = inspect(parent).key[2]
        self._parents[values] = shard
        return shard


class UpdateRouter:
    """Finds the shard of each row of an UPDATE by primary key.

    By the key itself where it says (a shard-aware ID, a shard key that is
    part of the primary key), else from the identity map, else by asking every
    shard which of the keys it holds (one query per shard per batch).
    """

    def __init__(
        self,
        session: ShardedSession,
        mapper: Mapper[Any],
        label: str,
        explicit: tuple[Any, str] | None = None,
    ) -> None:
        assert session.rules is not None
        self.session = session
        self.mapper = mapper
        self.label = label
        self.explicit = explicit
        self.rule = session.rules.for_mapper(mapper)
        self.name = mapper.class_.__name__
        self.columns = [_compat.plain(column) for column in mapper.primary_key]
        self.names = [_lookup_names(mapper, column) for column in self.columns]
        self._known: dict[tuple[Any, ...], set[Any]] | None = None  # identity map: key -> shards
        self.deciders: list[tuple[int, Callable[[Any], Any]]] = []
        for position, column in enumerate(self.columns):
            generator = generator_of(column)
            if generator is not None and getattr(generator, "encodes_shard", False):
                self.deciders.append((position, generator.shard_of))
            elif isinstance(self.rule, KeyRule) and _compat.plain(self.rule.column) is column:
                self.deciders.append((position, self.rule.strategy.shard_for))
        # rows that set what decides a shard must keep their row on its shard
        self.placer: RowRouter | None = None
        if self.rule is not None:
            self.placer = RowRouter(session, mapper, label)
            from .session import _protected_keys

            self.protected = set(_protected_keys(self.rule)) - {
                name for names in self.names for name in names
            }

    def shards_of(self, rows: list[tuple[int, Mapping[str, Any]]]) -> list[Any]:
        """The shard of each ``(caller index, row)``, in order."""
        keys: list[tuple[Any, ...]] = []
        for index, row in rows:
            key = tuple(_value(row, names) for names in self.names)
            if any(value is _MISSING or value is None for value in key):
                missing = [
                    n[0] for n, v in zip(self.names, key, strict=True) if v in (None, _MISSING)
                ]
                raise _about_row(
                    RoutingError(
                        f"{self.name} UPDATE by primary key needs the primary key; "
                        f"{', '.join(missing)} is not given"
                    ),
                    index,
                    self.label,
                )
            keys.append(key)
        if self.explicit is not None:
            shards: list[Any] = [self.explicit[0]] * len(rows)
        else:
            shards = [self._decided(key) for key in keys]
            unknown = [key for key, shard in zip(keys, shards, strict=True) if shard is None]
            if unknown:
                found = self._locate(unknown)
                for position, (key, shard) in enumerate(zip(keys, shards, strict=True)):
                    if shard is not None or key not in found:
                        continue
                    holders = found[key]
                    if len(holders) > 1:
                        raise _about_row(
                            RoutingError(
                                f"{self.name} with primary key {key!r} is on shards "
                                f"{', '.join(map(str, holders))}; which one to update is "
                                "ambiguous: pin the statement with set_shard_id(...)"
                            ),
                            rows[position][0],
                            self.label,
                        )
                    shards[position] = holders[0]
        for (index, row), key, shard in zip(rows, keys, shards, strict=True):
            if shard is None:
                raise BulkWriteError(
                    f"row {index} of {self.label}: no {self.name} with primary key {key!r} on "
                    "any shard; nothing was updated",
                    row_index=index,
                    shard=None,
                    statement=self.label,
                )
            if self.placer is not None and any(name in row for name in self.protected):
                self._refuse_move(index, row, shard)
        return shards

    def _decided(self, key: tuple[Any, ...]) -> Any | None:
        for position, decide in self.deciders:
            try:
                shard = decide(key[position])
            except ShardingError:
                continue
            if shard is not None:
                return shard
        return self._in_identity_map(key)

    def _in_identity_map(self, key: tuple[Any, ...]) -> Any | None:
        """The shard of an object with this key in the session, if exactly one has it."""
        if self._known is None:
            cls = self.mapper._identity_class
            self._known = {}
            for identity in self.session.identity_map.keys():  # noqa: SIM118 (a view)
                if identity[0] is cls:
                    self._known.setdefault(identity[1], set()).add(identity[2])
        tokens = self._known.get(key)
        return next(iter(tokens)) if tokens is not None and len(tokens) == 1 else None

    def _locate(self, keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """Ask each shard which of ``keys`` it holds."""
        from .session import set_shard_id

        session = self.session
        found: dict[tuple[Any, ...], list[Any]] = {}
        distinct = list(dict.fromkeys(keys))
        target = self.columns[0] if len(self.columns) == 1 else tuple_(*self.columns)
        for shard in session.shard_names:
            for start in range(0, len(distinct), 1000):
                chunk = distinct[start : start + 1000]
                values = [key[0] for key in chunk] if len(self.columns) == 1 else chunk
                statement = (
                    select(*self.columns).where(target.in_(values)).options(set_shard_id(shard))
                )
                with session.no_autoflush:
                    for row in session.execute(statement):
                        found.setdefault(tuple(row), []).append(shard)
        return found

    def _refuse_move(self, index: int, row: Mapping[str, Any], shard: Any) -> None:
        assert self.placer is not None
        target = self.placer.shard_of(index, row)
        if target != shard:
            name = next(name for name in self.protected if name in row)
            raise _about_row(
                ShardKeyChangeError(
                    f"UPDATE of {self.name} sets {name} to {row[name]!r}, which belongs on shard "
                    f"{target!r} while the row is on {shard!r}; moving rows between shards is "
                    "not supported (delete the row and insert a new one)",
                    model=self.name,
                    attribute=name,
                    value=row[name],
                ),
                index,
                self.label,
            )


def batches(rows: Iterable[Any], size: int) -> Iterator[Sequence[Any]]:
    """``rows`` in lists of at most ``size`` (an iterator is never read whole)."""
    if isinstance(rows, list | tuple) and len(rows) <= size:
        if rows:
            yield rows
        return
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def group(
    indices: Iterable[int], rows: list[Any], shards: list[Any]
) -> dict[Any, tuple[list[int], list[Any]]]:
    """Rows and their caller indices per shard, in first-seen shard order."""
    grouped: dict[Any, tuple[list[int], list[Any]]] = {}
    for index, row, shard in zip(indices, rows, shards, strict=True):
        entry = grouped.get(shard)
        if entry is None:
            entry = grouped[shard] = ([], [])
        entry[0].append(index)
        entry[1].append(row)
    return grouped


class ShardWrites:
    """The per-shard batches of one bulk statement, all or nothing.

    Each shard's first batch opens a SAVEPOINT for the statement on the
    session's connection to that shard, and every batch runs inside a
    savepoint of its own on top of it.  :meth:`finish` releases the
    statement's savepoints, :meth:`undo` rolls them back, so a failure
    anywhere leaves no row of the statement on any shard.  A refused batch is
    rolled back alone first, so the search for the refused row still sees the
    statement's earlier batches (a duplicate of a row of an earlier batch is
    found too).

    Shards whose connections share one database connection (SQLite shards in
    one file) share one statement savepoint, and every savepoint on that
    database connection is opened through the same SQLAlchemy connection:
    savepoints on one database connection nest, and each SQLAlchemy connection
    numbers its own, so names stay unique.
    """

    def __init__(
        self,
        session: ShardedSession,
        label: str,
        run: Callable[[Any, list[Any]], Any] | None = None,
        *,
        concurrency: int = 1,
        returning: bool = False,
    ) -> None:
        self.session = session
        self.label = label
        self.run = run  # (shard, rows) -> Result; or passed to each write
        self.savepoints: dict[Any, Any] = {}  # database connection -> statement savepoint
        # RETURNING rows are kept to be put in the caller's order; without
        # RETURNING only the first result and the rowcounts are (memory stays
        # bounded however many batches an iterator of rows makes)
        self.returning = returning
        self.results: list[tuple[list[int], Any]] = []
        self.rowcounts: list[Any] = []
        self.counts: dict[Any, int] = {}  # rows written per shard
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None

    # -- savepoints ------------------------------------------------------------
    def _connection(self, shard: Any) -> Any:
        return self.session.connection(bind_arguments={"shard_id": shard})

    def _savepoint_connection(self, shard: Any) -> Any:
        """The connection holding the statement's savepoint for ``shard`` (opened once)."""
        connection = self._connection(shard)
        database_connection = connection.connection.dbapi_connection
        savepoint = self.savepoints.get(database_connection)
        if savepoint is None:
            _compat.ensure_transaction_begun(connection)
            savepoint = self.savepoints[database_connection] = connection.begin_nested()
        return savepoint.connection

    def _batch_savepoint(self, shard: Any) -> Any:
        return self._savepoint_connection(shard).begin_nested()

    # -- writing ---------------------------------------------------------------
    def write(
        self,
        shard: Any,
        indices: list[int],
        rows: list[Any],
        run: Callable[[Any, list[Any]], Any] | None = None,
    ) -> None:
        """Send ``rows`` (the caller's ``indices``) to ``shard`` with ``run`` (or the default)."""
        self.write_many({shard: (indices, rows)}, run)

    def write_many(
        self,
        grouped: dict[Any, tuple[list[int], list[Any]]],
        run: Callable[[Any, list[Any]], Any] | None = None,
    ) -> None:
        """Send each shard its rows; concurrently when the shards are separate servers.

        Savepoints are opened here, on the calling thread; worker threads only
        run the statements, each on its own shard's connection.  A refused
        batch is then examined on the calling thread.
        """
        run = run or self.run
        assert run is not None, "a bulk write needs its writer"
        batches = {shard: self._batch_savepoint(shard) for shard in grouped}
        outcomes: dict[Any, Any] = {}
        if self._concurrent(grouped):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(self.concurrency, len(self.session.shard_names)),
                    thread_name_prefix="shardalchemy-bulk",
                )
            futures = {
                shard: self._pool.submit(run, shard, rows) for shard, (_, rows) in grouped.items()
            }
            for shard, future in futures.items():
                try:
                    outcomes[shard] = future.result()
                except exc.SQLAlchemyError as error:
                    outcomes[shard] = error
        else:
            for shard, (_, rows) in grouped.items():
                try:
                    outcomes[shard] = run(shard, rows)
                except exc.SQLAlchemyError as error:
                    outcomes[shard] = error
                    break  # the statement fails anyway: skip the other shards
        # close the batch savepoints innermost first (they may share one connection)
        failed = None
        for shard in reversed(list(grouped)):
            if shard not in outcomes:  # not run: an earlier shard failed
                batches[shard].rollback()
            elif isinstance(outcomes[shard], exc.SQLAlchemyError):
                batches[shard].rollback()
                failed = shard
            else:
                batches[shard].commit()
        if failed is not None:
            indices, rows = grouped[failed]
            self._raise_for_row(failed, indices, rows, outcomes[failed], run)
        for shard, (indices, rows) in grouped.items():
            result = outcomes[shard]
            if self.returning or not self.results:
                self.results.append((indices, result))
            self.rowcounts.append(getattr(result, "rowcount", None))
            self.counts[shard] = self.counts.get(shard, 0) + len(rows)

    def result(self) -> Any:
        """One result for the caller: RETURNING rows in the caller's order, rowcounts summed."""
        return merge_results(self.results, self.returning, self.rowcounts)

    def _concurrent(self, grouped: dict[Any, tuple[list[int], list[Any]]]) -> bool:
        """Whether running these batches at once can pay off, and is safe."""
        if self.concurrency < 2 or len(grouped) < 2:
            return False
        if sum(len(rows) for _, rows in grouped.values()) < CONCURRENT_MIN_ROWS:
            return False  # starting threads costs more than it saves
        connections = [self._connection(shard) for shard in grouped]
        if any(connection.dialect.name == "sqlite" for connection in connections):
            return False  # SQLite connections belong to their thread; one file anyway
        if any(connection.dialect.is_async for connection in connections):
            return False  # asyncio drivers run on the event loop's greenlet, not in threads
        databases = {id(connection.connection.dbapi_connection) for connection in connections}
        return len(databases) == len(connections)

    # -- failures --------------------------------------------------------------
    def _raise_for_row(
        self,
        shard: Any,
        indices: list[int],
        rows: list[Any],
        error: exc.SQLAlchemyError,
        run: Callable[[Any, list[Any]], Any],
    ) -> None:
        """Find the first row the shard refuses, undo the statement, raise naming the row."""
        try:
            if not _is_refusal(error):
                raise error  # not about a row (a statement SQLAlchemy cannot compile, ...)
            position, cause = self._first_refused(shard, rows, error, run)
        finally:
            self.undo()
        index = indices[position] if position is not None else None
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        where = f"row {index}" if index is not None else "a row"
        raise BulkWriteError(
            f"{where} of {self.label} was refused by shard {shard!r}: {reason}; no row "
            "of the statement was written on any shard",
            row_index=index,
            shard=shard,
            statement=self.label,
        ) from error

    def _first_refused(
        self,
        shard: Any,
        rows: list[Any],
        error: exc.SQLAlchemyError,
        run: Callable[[Any, list[Any]], Any],
    ) -> tuple[int | None, BaseException]:
        """Bisect ``rows`` on prefixes for the first row the shard refuses.

        Runs on top of the statement's earlier batches, inside a savepoint
        that is rolled back at the end.  Rows that went in stay while the next
        part is tried, so a duplicate within the batch is found too.  ``None``
        if no single row fails again.
        """
        probe = self._batch_savepoint(shard)
        cause: BaseException = error
        start, stop = 0, len(rows)
        try:
            while stop - start > 1:
                middle = (start + stop) // 2
                if self._fails(run, shard, rows[start:middle]) is None:
                    start = middle
                else:
                    stop = middle
            failure = self._fails(run, shard, rows[start:stop])
        finally:
            probe.rollback()
        return (start, failure) if failure is not None else (None, cause)

    def _fails(
        self, run: Callable[[Any, list[Any]], Any], shard: Any, rows: list[Any]
    ) -> BaseException | None:
        """Run ``rows`` in a savepoint: ``None`` (kept) if they went in, else the error."""
        step = self._batch_savepoint(shard)
        try:
            run(shard, rows)
        except exc.SQLAlchemyError as failure:
            if not _is_refusal(failure):
                raise
            step.rollback()
            return failure
        step.commit()
        return None

    # -- the end -----------------------------------------------------------------
    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def undo(self) -> None:
        """Roll every shard back to before the statement."""
        self._close()
        for savepoint in reversed(list(self.savepoints.values())):
            if savepoint.is_active:
                savepoint.rollback()
        self.savepoints.clear()

    def finish(self) -> None:
        """Keep the statement's rows (in the session's transaction) and record its route."""
        self._close()
        for savepoint in reversed(list(self.savepoints.values())):
            savepoint.commit()
        self.savepoints.clear()
        if self.session._route_log is not None:
            from .router import Route

            spread = ", ".join(f"{shard} {count}" for shard, count in self.counts.items())
            reason = f"rows routed one by one ({spread})" if spread else "no rows"
            self.session._record(Route(tuple(self.counts), reason), label=self.label)


def _is_refusal(error: BaseException) -> bool:
    """Whether a bulk batch failed because of its rows (the database, or an UPDATE's miss)."""
    from sqlalchemy.orm.exc import StaleDataError

    return isinstance(error, exc.DBAPIError | StaleDataError)


def merge_results(
    results: list[tuple[list[int], Any]], returning: bool, rowcounts: list[Any]
) -> Any:
    """One result for the caller: RETURNING rows in the caller's row order, rowcounts summed.

    Without RETURNING, ``results`` holds the first batch's result only and
    ``rowcounts`` every batch's rowcount.
    """
    if not results:  # no rows were given
        return IteratorResult(SimpleResultMetaData([]), iter(()))
    if not returning:
        first = results[0][1]
        if len(rowcounts) == 1:
            return first
        merged = first.merge()
        if all(isinstance(count, int) for count in rowcounts):
            # what one executemany would report: the total, or -1 (the DBAPI's
            # "unknown") when a driver could not tell
            merged.rowcount = sum(rowcounts) if min(rowcounts) >= 0 else -1
        return merged
    ordered: list[tuple[int, Any]] = []
    frozen = None
    for indices, result in results:
        frozen_part = result.freeze()
        frozen = frozen or frozen_part
        rows = frozen_part.data
        if frozen_part._source_supports_scalars:
            rows = [(value,) for value in rows]
        if len(rows) != len(indices):
            raise RoutingError(
                f"RETURNING gave {len(rows)} rows for {len(indices)} rows written; cannot "
                "put them in the caller's order"
            )
        ordered.extend(zip(indices, rows, strict=True))
    ordered.sort(key=lambda pair: pair[0])
    assert frozen is not None
    return frozen.with_new_rows([row for _, row in ordered])()


NOT_HANDLED = object()
"""What :func:`execute_write` returns for a statement that is not a routed write."""


def execute_write(
    session: ShardedSession, orm_context: ORMExecuteState, explicit: tuple[Any, str] | None
) -> Any:
    """Route and run an INSERT, or an ORM UPDATE by primary key, row by row.

    Returns the result, ``None`` when the statement was pinned to one shard
    and SQLAlchemy should simply go on, or :data:`NOT_HANDLED` for statements
    routed as a whole (INSERT ... SELECT, UPDATE ... WHERE).
    """
    statement = orm_context.statement
    parameters = orm_context.parameters
    many = parameters is not None and not isinstance(parameters, Mapping)
    if orm_context.is_insert:
        if getattr(statement, "select", None) is not None:
            return NOT_HANDLED
    elif not (
        orm_context.is_update
        and orm_context.is_orm_statement
        and many
        and not _compat.has_where(statement)
    ):
        return NOT_HANDLED
    from .router import statement_label

    label = statement_label(statement)
    if session.rules is None:
        return _pinned_drop_in(session, orm_context, explicit, label)
    target: Any = orm_context.bind_mapper if orm_context.is_orm_statement else statement.table
    if orm_context.is_update:
        return _run_batches(
            session, orm_context, label, UpdateRouter(session, target, label, explicit)
        )
    router = RowRouter(session, target, label, explicit)
    values, multi = _compat.insert_values(statement)
    if multi is not None:
        return _run_multi_values(session, orm_context, label, router, multi)
    if many:
        return _run_batches(session, orm_context, label, router, values)
    row = {**(values or {}), **(parameters or {})}
    return _write_one_row(session, orm_context, router.shard_of(0, row))


def _write_one_row(session: ShardedSession, orm_context: ORMExecuteState, shard: Any) -> Any:
    """Write a one-row statement on ``shard``: the result, or ``None`` to let SQLAlchemy go on."""
    parameters = orm_context.parameters
    if parameters and orm_context.is_orm_statement:
        # an ORM INSERT given one dict takes SQLAlchemy's bulk code path
        return _runner(session, orm_context)(shard, [parameters])
    # the row is in the statement itself: pin it to its shard and let SQLAlchemy go on
    orm_context.bind_arguments["shard_id"] = shard
    orm_context.update_execution_options(
        identity_token=shard, **_compat.returning_load_options(orm_context, shard)
    )
    return None


def _pinned_drop_in(
    session: ShardedSession, orm_context: ORMExecuteState, explicit: Any, label: str
) -> Any:
    """Drop-in mode (no shard map): a bulk write runs on the one shard it is pinned to."""
    if explicit is not None:
        shards: tuple[Any, ...] = (explicit[0],)
    else:
        shards = tuple(session.execute_chooser(orm_context))
    if not shards:
        raise RoutingError(
            f"the execute chooser chose no shard for {label}; it must return at least one "
            "shard name"
        )
    if len(set(shards)) != 1:
        raise RoutingError(
            f"{label} reaches shards {shards!r}; without a shard map, bulk writes are not "
            "routed row by row: pin the statement with set_shard_id(...) or build the session "
            "with shard_map=... (row-by-row routing)"
        )
    shard = session.check_shard(shards[0], "the execute chooser's result")
    parameters = orm_context.parameters
    if parameters is None or isinstance(parameters, Mapping):
        return _write_one_row(session, orm_context, shard)
    rows = list(parameters)
    writes = ShardWrites(
        session,
        label,
        _runner(session, orm_context),
        returning=_compat.has_returning(orm_context.statement),
    )
    try:
        writes.write(shard, list(range(len(rows))), rows)
    except BaseException:
        writes.undo()
        raise
    writes.finish()
    return writes.result()


def _runner(
    session: ShardedSession, orm_context: ORMExecuteState, statement: Any = None
) -> Callable[[Any, list[Any]], Any]:
    """Runs the statement with some rows on one shard, through SQLAlchemy's own bulk code."""
    multi_row = statement is not None  # one INSERT ... VALUES (...), (...) per shard
    statement = statement if statement is not None else orm_context.statement
    returning = _compat.has_returning(statement)
    if returning and not multi_row:
        # executemany: SQLAlchemy sorts RETURNING rows by parameter set when
        # asked; a multi-row VALUES returns its rows in VALUES order
        statement = _compat.in_parameter_order(statement)
    by_primary_key = orm_context.is_update and orm_context.is_orm_statement

    def run(shard: Any, rows: list[Any]) -> Any:
        options: dict[str, Any] = {"identity_token": shard, "autoflush": False}
        if by_primary_key:
            # decided again for these rows: given as an iterator, the statement
            # looked like an UPDATE of every row to SQLAlchemy at first
            options["dml_strategy"] = "bulk"
        if returning and orm_context.is_orm_statement:
            options.update(_compat.returning_load_options(orm_context, shard))
        # a copy per call: batches of several shards may run at once, each
        # with its own rows (invoke_statement reads them from the state)
        state = copy.copy(orm_context)
        state.parameters = rows
        with writing_to(session, shard):
            result = state.invoke_statement(
                statement=statement,
                bind_arguments={"shard_id": shard},
                execution_options=options,
            )
        if returning and session.get_bind(shard_id=shard).dialect.name == "sqlite":
            # a single INSERT ... RETURNING leaves SQLite's statement open, and
            # SQLite refuses to release the batch's savepoint under it: read
            # the rows now (other drivers hand them over buffered)
            result = result.freeze()()
        return result

    return run


def _run_batches(
    session: ShardedSession,
    orm_context: ORMExecuteState,
    label: str,
    router: RowRouter | UpdateRouter,
    values: Mapping[str, Any] | None = None,
) -> Any:
    """Executemany: route each batch of rows, one executemany per shard and batch."""
    parameters = orm_context.parameters
    options = orm_context.execution_options
    if "bulk_batch_size" in options:
        size = options["bulk_batch_size"]
    elif isinstance(parameters, list | tuple):
        # rows already in memory: one executemany per shard, as the caller sent one
        size = max(len(parameters), 1)
    else:
        size = DEFAULT_BATCH_SIZE  # an iterator: read a batch at a time
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise RoutingError(f"bulk_batch_size must be a positive number of rows, not {size!r}")
    if orm_context.is_orm_statement:
        _compat.autoflush(session)
    writes = ShardWrites(
        session,
        label,
        _runner(session, orm_context),
        concurrency=concurrency(orm_context),
        returning=_compat.has_returning(orm_context.statement),
    )
    offset = 0
    try:
        for batch in batches(parameters, size):
            indices = range(offset, offset + len(batch))
            if isinstance(router, UpdateRouter):
                shards = router.shards_of(list(zip(indices, batch, strict=True)))
            else:
                routed = [{**values, **row} for row in batch] if values else batch
                shards = router.shards_of(offset, routed)
            writes.write_many(group(indices, batch, shards))
            offset += len(batch)
    except BaseException:
        writes.undo()
        raise
    writes.finish()
    return writes.result()


def _run_multi_values(
    session: ShardedSession,
    orm_context: ORMExecuteState,
    label: str,
    router: RowRouter,
    multi: list[tuple[dict[str, Any], dict[Any, Any]]],
) -> Any:
    """``insert().values([...])``: one multi-row INSERT per shard, with that shard's rows."""
    statement = orm_context.statement
    bare = _compat.without_values(statement)
    shards = [router.shard_of(index, routed) for index, (routed, _) in enumerate(multi)]
    grouped = group(range(len(multi)), [raw for _, raw in multi], shards)

    def run(shard: Any, rows: list[Any]) -> Any:
        return _runner(session, orm_context, bare.values(rows))(shard, None)  # type: ignore[arg-type]

    writes = ShardWrites(session, label, run, returning=_compat.has_returning(statement))
    try:
        for shard, (indices, rows) in grouped.items():
            writes.write(shard, indices, rows)
    except BaseException:
        writes.undo()
        raise
    writes.finish()
    return writes.result()


def concurrency(orm_context: ORMExecuteState) -> int:
    """How many shards a bulk statement may write at once (option ``bulk_concurrency``)."""
    value = orm_context.execution_options.get("bulk_concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RoutingError(f"bulk_concurrency must be a positive number of shards, not {value!r}")
    return value
