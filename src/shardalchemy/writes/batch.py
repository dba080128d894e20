"""The per-shard batches of one bulk statement, all or nothing."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import IteratorResult
from sqlalchemy.engine.result import SimpleResultMetaData

from .._sqlalchemy import failures
from .._sqlalchemy.results import yields_scalars
from .._sqlalchemy.savepoints import StatementSavepoints
from ..errors import BulkWriteError, RoutingError, ShardQueryError
from ..routing.route import Route
from .protocol import WritingSession

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


# The shard a bulk write of this thread is sending rows to.  SQLAlchemy's bulk
# code asks the session for "the" connection of a mapper, without a shard; the
# session answers from here (see WritingSession.get_bind / connection_callable).
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

    A failure that is not about a row (a lock wait, a deadlock, a timeout, a
    lost connection, a full disk: :func:`failures.blames_the_shard`) is never
    searched for a row: it raises :class:`ShardQueryError` naming the shard,
    ``retryable`` when transient.  Savepoints whose connection (or whose
    transaction, as InnoDB's deadlock victim) is gone are not rolled back:
    the server has undone them, and trying raises a second, misleading error;
    their SQLAlchemy connection is invalidated instead, so the session
    refuses to go on until it is rolled back, as SQLAlchemy does for one
    database.
    """

    def __init__(
        self,
        session: WritingSession,
        label: str,
        run: Callable[[Any, list[Any]], Any] | None = None,
        *,
        concurrency: int = 1,
        returning: bool = False,
    ) -> None:
        self.session = session
        self.label = label
        self.run = run  # (shard, rows) -> Result; or passed to each write
        self.savepoints = StatementSavepoints(session)  # one per database connection
        # RETURNING rows are kept to be put in the caller's order; without
        # RETURNING only the first result and the rowcounts are (memory stays
        # bounded however many batches an iterator of rows makes)
        self.returning = returning
        self.results: list[tuple[list[int], Any]] = []
        self.rowcounts: list[Any] = []
        self.counts: dict[Any, int] = {}  # rows written per shard
        self.concurrency = concurrency
        self._threads: ThreadPoolExecutor | None = None

    # -- savepoints ------------------------------------------------------------
    def _shard_connection(self, shard: Any) -> Any:
        return self.session.connection(bind_arguments={"shard_id": shard})

    def _savepoint_connection(self, shard: Any) -> Any:
        """The connection holding the statement's savepoint for ``shard`` (opened once)."""
        connection = self._shard_connection(shard)
        with self._failing_on(shard):
            return self.savepoints.open(shard, connection)

    @contextlib.contextmanager
    def _failing_on(self, shard: Any) -> Iterator[None]:
        """Within the block, a failure of ``shard`` itself raises :class:`ShardQueryError`."""
        try:
            yield
        except exc.SQLAlchemyError as error:
            if failures.blames_the_shard(error):
                self._raise_for_shard(shard, error)
            raise

    def _batch_savepoint(self, shard: Any) -> Any:
        connection = self._savepoint_connection(shard)
        with self._failing_on(shard):
            return connection.begin_nested()

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
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    max_workers=min(self.concurrency, len(self.session.shard_names)),
                    thread_name_prefix="shardalchemy-bulk",
                )
            futures = {
                shard: self._threads.submit(run, shard, rows)
                for shard, (_, rows) in grouped.items()
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
        # close the batch savepoints innermost first (they may share one connection);
        # closing one can fail too (a connection killed just after its batch ran)
        errors: dict[Any, exc.SQLAlchemyError] = {}
        for shard in reversed(list(grouped)):
            outcome = outcomes.get(shard)
            try:
                if isinstance(outcome, exc.SQLAlchemyError):
                    errors[shard] = outcome
                    _rollback_unless_lost(batches[shard], outcome)
                elif shard not in outcomes:  # not run: an earlier shard failed
                    batches[shard].rollback()
                else:
                    batches[shard].commit()
            except exc.SQLAlchemyError as closing:
                # the shard failing by itself (its connection gone) outweighs a refused row
                if shard not in errors or failures.blames_the_shard(closing):
                    errors[shard] = closing
        errors = {shard: errors[shard] for shard in grouped if shard in errors}
        # a shard that failed by itself first: its rows are not to blame, and the
        # session may have to be rolled back, which a BulkWriteError would deny
        for shard, failure in errors.items():
            if failures.blames_the_shard(failure):
                self._raise_for_shard(shard, failure, errors)
        if errors:
            failed, refusal = next(iter(errors.items()))
            indices, rows = grouped[failed]
            self._raise_for_row(failed, indices, rows, refusal, run)
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
        connections = [self._shard_connection(shard) for shard in grouped]
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
        except exc.SQLAlchemyError as stopped:
            if stopped is not error and failures.blames_the_shard(stopped):
                # the search itself met a lock wait, a timeout, a lost connection
                self._raise_for_shard(shard, stopped, searching=True)
            raise
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

    def _raise_for_shard(
        self,
        shard: Any,
        error: exc.SQLAlchemyError,
        errors: dict[Any, exc.SQLAlchemyError] | None = None,
        *,
        searching: bool = False,
    ) -> None:
        """Undo the statement and raise :class:`ShardQueryError`: ``shard`` failed, not a row."""
        lost = failures.is_transaction_lost(error)
        if lost:
            self._invalidate(shard)
        self.undo()
        reason = failures.describe(error)
        transient = failures.is_transient(error)
        searched = " (found while searching the batch for a refused row)" if searching else ""
        if lost:
            what = (
                "the connection to the shard was lost"
                if failures.is_connection_lost(error)
                else "the shard rolled the session's transaction back"
            )
            advice = (
                f"{what}, and the session's transaction with it: roll the session back "
                "(session.rollback()), then retry the transaction"
            )
        elif transient:
            advice = (
                "no row of the statement was written on any shard; roll the session back and "
                "retry the transaction"
            )
        else:
            advice = (
                "the shard refused the statement as a whole, whatever its rows; no row of the "
                "statement was written on any shard"
            )
        kind = "a transient failure" if transient else "a failure of the shard"
        raise ShardQueryError(
            f"{self.label} failed on shard {shard!r}{searched}: {reason}; {kind}, not a "
            f"refused row: {advice}",
            shard=shard,
            failures=dict(errors) if errors else {shard: error},
            retryable=transient,
        ) from error

    def _invalidate(self, shard: Any) -> None:
        """The server has lost ``shard``'s transaction: make SQLAlchemy refuse to go on too.

        SQLAlchemy invalidates a connection whose disconnect its dialect
        recognises, not one killed by an error it reads as ordinary
        (PostgreSQL's admin_shutdown, InnoDB's deadlock); an invalidated
        connection raises ``PendingRollbackError`` until the session is rolled
        back, as after any lost connection.
        """
        connection = self.savepoints.connections.get(shard) or self._shard_connection(shard)
        if not connection.invalidated:
            connection.invalidate()

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
        except BaseException as stopped:
            _rollback_unless_lost(probe, stopped)
            raise
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
            _rollback_unless_lost(step, failure)
            if not _is_refusal(failure) or failures.blames_the_shard(failure):
                raise  # not about these rows: the search stops
            return failure
        step.commit()
        return None

    # -- the end -----------------------------------------------------------------
    def _stop_threads(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None

    def __enter__(self) -> ShardWrites:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        # any exception, KeyboardInterrupt included, undoes the whole statement
        if kind is None:
            self.finish()
        else:
            self.undo()

    def undo(self) -> None:
        """Roll every shard back to before the statement.

        A savepoint whose connection is gone is left alone: the server undid
        it with the connection.  One whose rollback fails (the server rolled
        the whole transaction back, InnoDB with ``innodb_rollback_on_timeout``)
        has its connection invalidated instead of raising over the error that
        made the statement fail.
        """
        self._stop_threads()
        self.savepoints.undo()

    def finish(self) -> None:
        """Keep the statement's rows (in the session's transaction) and record its route."""
        self._stop_threads()
        self.savepoints.release(self._failing_on)
        if self.session.recording:
            spread = ", ".join(f"{shard} {count}" for shard, count in self.counts.items())
            reason = f"rows routed one by one ({spread})" if spread else "no rows"
            self.session.record_route(Route(tuple(self.counts), reason), label=self.label)


def _rollback_unless_lost(savepoint: Any, failure: BaseException) -> None:
    """Roll ``savepoint`` back, unless ``failure`` took its connection or transaction with it."""
    if failures.is_transaction_lost(failure) or savepoint.connection.invalidated:
        return  # the server undid it; a ROLLBACK TO SAVEPOINT would only fail again
    if savepoint.is_active:
        savepoint.rollback()


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
        if yields_scalars(frozen_part):
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
