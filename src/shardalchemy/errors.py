"""The shardalchemy exception hierarchy.

Every error the library raises on purpose derives from :class:`ShardingError`,
so ``except shardalchemy.ShardingError`` catches them all. Messages name the
model, the attribute, the value and the shard involved, and say what to do::

    ShardingError
    ├── ConfigurationError         an option or setting has a value it cannot take
    ├── ShardMapError              which shards exist, where they live
    │   └── UnknownShardError      a shard name the shard map does not define
    ├── ModelConfigurationError    a model's __sharding__ declaration
    ├── ShardKeyError              a row's shard key gives no shard
    │   ├── MissingShardKeyError
    │   ├── UnknownShardKeyError
    │   └── ShardKeyChangeError    a change that would move a row between shards
    ├── MissingParentError         a follower without a parent
    ├── RoutingError               a statement or identity that cannot be routed
    │   └── ScatterQueryError      a scatter refused in no-scatter mode
    ├── CrossShardQueryError       a construct no plan answers exactly
    ├── BulkWriteError             a row a bulk write's database refused
    ├── CommitError                a commit across shards did not complete (.outcomes)
    │   └── TwoPhaseUnavailableError  a shard's server cannot prepare (how to enable it)
    └── ShardQueryError            a statement failed on a shard (.retryable)
        └── ShardTimeoutError      ... or did not answer in time (always retryable)

Transient failures are distinguishable from permanent ones: a lock wait, a
deadlock, a timeout or a lost connection raises :class:`ShardQueryError` with
``retryable`` true (the same work, in a new transaction, may succeed), never a
:class:`BulkWriteError`, which is kept for a row the database refused on its
merits (a constraint, a type) and is not retried as it is.

Example:

>>> session.add(City(id=20, continent="Oceania", name="Sydney"))
>>> try:
...     session.flush()
... except shardalchemy.UnknownShardKeyError as error:
...     print(error.model, error.attribute, error.value)
City continent Oceania
"""

from __future__ import annotations

from typing import Any


class ShardingError(Exception):
    """Base class of every error raised by shardalchemy.

    ``row_index`` is set when the error concerns one row of a bulk write: the
    0-based position of that row in the rows the caller passed.
    """

    row_index: int | None = None


class ConfigurationError(ShardingError):
    """An option or setting has a value it cannot take.

    Example: ``execution_options(shard_timeout=-1)``, ``cross_shard="sometimes"``,
    ``bulk_batch_size=0``.
    """


class ShardMapError(ShardingError):
    """The shard map (which shards exist, where they live) is misconfigured.

    Example: two shards with the same name, or an empty shard map.
    """


class UnknownShardError(ShardMapError, KeyError):
    """A shard name that the shard map does not define.

    Raised for a strategy, an option such as ``set_shard_id("mars")`` or a
    chooser that names a shard the session does not know.
    """

    def __init__(self, shard: Any, known: Any, where: str) -> None:
        self.shard = shard
        self.known = tuple(known)
        super().__init__(
            f"unknown shard {shard!r} in {where}; the shard map defines "
            f"{', '.join(repr(name) for name in self.known) or 'no shards'}"
        )

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class ModelConfigurationError(ShardingError):
    """A model's sharding declaration is inconsistent.

    Example: a model with two shard keys, or a model that follows a parent
    that is not sharded.
    """


class ShardKeyError(ShardingError):
    """A row's shard key cannot be turned into a shard.

    ``model``, ``attribute`` and ``value`` say which row and which value.  When
    the value is refused because the database would store it as a value that
    cannot be known (``"7.5"`` for an ``Integer``, an aware datetime for a naive
    column), ``column_type`` names the column's type and ``reason`` says why.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        attribute: str,
        value: Any,
        column_type: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.model = model
        self.attribute = attribute
        self.value = value
        self.column_type = column_type
        self.reason = reason
        super().__init__(message)


class MissingShardKeyError(ShardKeyError):
    """The shard key of a row is ``None``, so the row has no shard."""


class UnknownShardKeyError(ShardKeyError):
    """The strategy maps no shard to this shard-key value."""


class ShardKeyChangeError(ShardKeyError):
    """A persistent row's shard key was changed.

    Moving a row between shards is not supported yet; delete the row and
    insert a new one instead.
    """


class MissingParentError(ShardingError):
    """A row of a model that follows its parent has no parent to follow."""

    def __init__(self, message: str, *, model: str, relationship: str) -> None:
        self.model = model
        self.relationship = relationship
        super().__init__(message)


class RoutingError(ShardingError):
    """A statement or identity could not be routed to any shard.

    Example: an ``execute_chooser`` that returns no shard at all.
    """


class ScatterQueryError(RoutingError):
    """A statement would reach every shard while scatter queries are refused.

    Raised in no-scatter mode (``ShardedSession(no_scatter=True)`` or the
    execution option ``no_scatter=True``). ``tables`` are the statement's
    sharded tables and ``missing`` the shard-key predicates that would pin it.
    """

    def __init__(self, message: str, *, tables: list[str], missing: list[str]) -> None:
        self.tables = tables
        self.missing = missing
        super().__init__(message)


class BulkWriteError(ShardingError):
    """A bulk write failed on a shard: the database refused a row, or an UPDATE found no row.

    ``row_index`` is the caller's 0-based index of the failing row (``None``
    when it cannot be told), ``shard`` the shard that refused it (``None`` when
    the row is on no shard), ``statement`` the statement's label; the database
    error is chained as ``__cause__``.  None of the statement's rows remain on
    any shard, and the session stays usable.

    Example (row 1 repeats Tokyo's id on Tokyo's shard):

    >>> rows = [
    ...     {"id": 30, "continent": "Asia", "name": "Seoul"},
    ...     {"id": 1, "continent": "Asia", "name": "Tokyo again"},
    ... ]
    >>> try:
    ...     session.execute(insert(City), rows)
    ... except shardalchemy.BulkWriteError as error:
    ...     print(error.row_index, error.shard, type(error.__cause__).__name__)
    1 asia IntegrityError
    """

    def __init__(self, message: str, *, row_index: int | None, shard: Any, statement: str) -> None:
        self.row_index = row_index
        self.shard = shard
        self.statement = statement
        super().__init__(message)


class CrossShardQueryError(ShardingError):
    """A multi-shard SELECT uses a construct shardalchemy cannot answer exactly.

    Raised instead of returning an answer that differs from what one database
    holding every shard's rows would return.  ``construct`` names what could
    not be merged (``"window function row_number()"``, ``"FOR UPDATE"``, ...);
    the message says what to do: pin the statement to one shard, rewrite it,
    or opt into SQLAlchemy's concatenation with
    ``.execution_options(cross_shard="concatenate")``.

    Example:

    >>> try:
    ...     session.execute(select(func.row_number().over(order_by=City.name)))
    ... except shardalchemy.CrossShardQueryError as error:
    ...     print(error.construct)
    window function row_number() OVER (ORDER BY cities.name)
    """

    def __init__(self, message: str, *, construct: str) -> None:
        self.construct = construct
        super().__init__(message)


class ShardQueryError(ShardingError):
    """A statement failed on one or more shards of a multi-shard execution or a bulk write.

    ``shard`` is the first shard that failed, ``failures`` maps every failed
    shard to its exception (the database's error, or :class:`ShardTimeoutError`)
    and the first one is chained as ``__cause__``.  The other shards' work was
    cancelled and nothing the statement wrote remains.

    ``retryable`` is true when that cause is transient (a lock wait or
    deadlock, a serialization failure, a statement timeout, a lost connection,
    a server shutting down), so that the same work may succeed when tried
    again, and false for a permanent failure (a missing table, a privilege).
    Retry the whole transaction: after some transient failures the server has
    rolled back more than the statement.  When the connection to the shard was
    lost, the session's transaction cannot go on: call ``session.rollback()``
    before using the session again (SQLAlchemy raises ``PendingRollbackError``
    until then).

    Example (a shard whose table is missing):

    >>> europe = {"shard_id": "europe"}
    >>> _ = session.execute(text("DROP TABLE europe_reports"), bind_arguments=europe)
    >>> try:
    ...     session.execute(select(Report), execution_options={"shard_timeout": 2.0})
    ... except shardalchemy.ShardQueryError as error:
    ...     print(error.shard, sorted(error.failures), error.retryable)
    europe ['europe'] False
    """

    def __init__(
        self,
        message: str,
        *,
        shard: Any,
        failures: dict[Any, BaseException],
        retryable: bool | None = None,
    ) -> None:
        self.shard = shard
        self.failures = failures
        self._retryable = retryable
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        """Whether the failure is transient: the same work, tried again, may succeed.

        Given to the constructor, or else read from the error chained as
        ``__cause__`` (``raise ShardQueryError(...) from error``).
        """
        if self._retryable is not None:
            return self._retryable
        cause = self.__cause__
        if cause is None:
            return False
        if isinstance(cause, ShardQueryError):
            return cause.retryable
        from ._sqlalchemy import failures

        return failures.is_transient(cause)


class ShardTimeoutError(ShardQueryError):
    """A shard did not answer within the statement's ``shard_timeout``.

    Always ``retryable``: the shard may answer in time when it is less busy,
    or with a longer ``shard_timeout``.
    """

    @property
    def retryable(self) -> bool:
        """Always true: a deadline missed is a failure of the moment."""
        return True


def cross_shard_refusal(construct: str, why: str) -> CrossShardQueryError:
    """The error for a construct that cannot be answered exactly across shards.

    >>> print(cross_shard_refusal("FOR UPDATE", "locks are per shard"))  # doctest: +ELLIPSIS
    FOR UPDATE cannot be answered exactly across shards: locks are per shard. Pin the ...
    """
    return CrossShardQueryError(
        f"{construct} cannot be answered exactly across shards: {why}. Pin the statement to "
        "one shard (a shard-key predicate or set_shard_id(...)), rewrite it, or ask for "
        "SQLAlchemy's concatenated per-shard results with "
        ".execution_options(cross_shard='concatenate')",
        construct=construct,
    )


def about_row(error: ShardingError, index: int, label: str) -> ShardingError:
    """``error``, told that it concerns row ``index`` of the statement ``label``.

    >>> str(about_row(RoutingError("no shard"), 3, "INSERT cities"))
    'row 3 of INSERT cities: no shard'
    """
    error.row_index = index
    if error.args and isinstance(error.args[0], str):
        error.args = (f"row {index} of {label}: {error.args[0]}", *error.args[1:])
    return error


__all__ = [
    "BulkWriteError",
    "ConfigurationError",
    "CrossShardQueryError",
    "MissingParentError",
    "MissingShardKeyError",
    "ModelConfigurationError",
    "RoutingError",
    "ScatterQueryError",
    "ShardKeyChangeError",
    "ShardKeyError",
    "ShardMapError",
    "ShardQueryError",
    "ShardTimeoutError",
    "ShardingError",
    "UnknownShardError",
    "UnknownShardKeyError",
]


COMMITTED = "committed"
ROLLED_BACK = "rolled back"
IN_DOUBT = "in doubt"


class CommitError(ShardingError):
    """A commit across shards that could not complete; nothing was committed silently.

    ``outcomes`` says what became of every shard of the transaction:
    ``"committed"``, ``"rolled back"`` or ``"in doubt"`` (the shard's server was lost
    while the outcome was being decided: recovery, ``shardalchemy recover`` or the
    session's recoverer, commits or rolls it back as the decision says).
    ``transaction_id`` names the transaction in the decision log and in the
    participants' prepared transactions (``None`` when nothing was prepared).
    The chained ``__cause__`` is the driver's error that stopped the commit.

    Example:

    >>> error = CommitError({"a": "rolled back", "b": "rolled back"}, "7f3a", "b: lost")
    >>> error.outcomes["b"], error.transaction_id
    ('rolled back', '7f3a')
    """

    def __init__(self, outcomes: dict[Any, str], transaction_id: str | None, reason: str) -> None:
        self.outcomes = dict(outcomes)
        self.transaction_id = transaction_id
        self.reason = reason
        shards = ", ".join(f"{shard}: {outcome}" for shard, outcome in self.outcomes.items())
        named = f" (transaction {transaction_id})" if transaction_id else ""
        super().__init__(f"commit across shards did not complete{named}: {reason}; {shards}")

    @property
    def in_doubt(self) -> bool:
        """Whether some shard's outcome is not known yet (recovery will settle it)."""
        return IN_DOUBT in self.outcomes.values()


class TwoPhaseUnavailableError(CommitError):
    """A shard written by a multi-shard transaction cannot prepare it; all rolled back.

    Raised at the first atomic commit that needs the shard: PostgreSQL's
    ``max_prepared_transactions`` is 0 (its default), or the shard's backend has
    no prepared transactions shardalchemy can use.  Enable it
    (``ALTER SYSTEM SET max_prepared_transactions = 64`` and restart the
    server), or choose ``ShardedSession(commit="best_effort")``.
    """
