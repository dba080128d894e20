"""The commit of a session's root transaction over several shards' connections.

SQLAlchemy commits a session's connections one by one, in set order; shardalchemy takes
that commit over at its first step (the ``commit`` event of the first connection, after
the session has flushed) and runs one of two protocols for all of them at once:

Atomic (PostgreSQL participants; ``commit="atomic"``, and ``"auto"`` where every writing
participant can prepare):

1. *probe* each participant: did it write (``pg_current_xact_id_if_assigned()``), can its
   server prepare (``max_prepared_transactions``)?  Read-only participants just commit;
   with one writer left, it commits alone, in one phase.
2. pick the first writer as the *decider*; its transaction takes an advisory lock on the
   transaction id (held until it ends: a recoverer that cannot take it knows the
   coordinator is alive).
3. ``PREPARE TRANSACTION`` every other writer.
4. insert the decision row in the decider's transaction and commit it: that one local
   commit is the decision.  It fails: roll every prepared one back.
5. ``COMMIT PREPARED`` every other writer.  A failure here is no failure of the
   transaction: it is committed, and recovery finishes that participant.

Best effort (``commit="best_effort"``, and ``"auto"`` with a writer that cannot prepare,
such as SQLite): each participant commits in turn; at the first failure the rest roll
back, and :class:`~shardalchemy.CommitError` names what each shard became.

Neither makes shards *isolated* from one another: a reader may see one shard's part of a
transaction before the other's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .._sqlalchemy.failures import describe, is_connection_lost
from ..errors import (
    COMMITTED,
    IN_DOUBT,
    ROLLED_BACK,
    CommitError,
    ConfigurationError,
    TwoPhaseUnavailableError,
)
from . import decisions, failpoints
from .participants import Participant

log = logging.getLogger("shardalchemy.transactions")

MODES = ("auto", "atomic", "best_effort")

ENABLE_TWO_PHASE = (
    "enable prepared transactions on that server (ALTER SYSTEM SET "
    "max_prepared_transactions = 64, then restart it), or choose best effort: "
    'ShardedSession(commit="best_effort")'
)


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ConfigurationError(
            f"ShardedSession(commit={mode!r}): choose one of "
            + ", ".join(repr(name) for name in MODES)
        )
    return str(mode)


class CommitState:
    """The connections one root transaction of a session has begun, by shard."""

    __slots__ = ("connections", "mode", "on_in_doubt", "started")

    def __init__(self, mode: str, on_in_doubt: Callable[[], None] | None) -> None:
        self.connections: dict[Any, Any] = {}  # Connection -> shard
        self.mode = mode
        self.started = False
        self.on_in_doubt = on_in_doubt

    def _databases(self) -> list[tuple[Any, Any]]:
        # shards of one database share the session's one connection (and transaction):
        # one participant per database connection
        databases: dict[int, tuple[Any, Any]] = {}
        for connection, shard in self.connections.items():
            databases.setdefault(id(connection.connection.dbapi_connection), (connection, shard))
        return list(databases.values())

    def spans_databases(self) -> bool:
        """Whether the transaction holds connections to more than one database."""
        return len(self.connections) > 1 and len(self._databases()) > 1

    def commit(self) -> None:
        """Commit every connection's transaction (before SQLAlchemy's own COMMITs)."""
        self.started = True
        databases = self._databases()
        if len(databases) < 2:
            return  # one database: its own COMMIT is atomic, nothing added
        participants = [Participant(shard, connection) for connection, shard in databases]
        try:
            if self.mode == "best_effort":
                best_effort(participants)
            else:
                atomic(participants, self.mode, self.on_in_doubt)
        except CommitError:
            _forget_if_lost(participants)
            raise


def _fail(
    outcomes: dict[Any, str],
    transaction_id: str | None,
    why: str,
    error: BaseException | None,
    kind: type[CommitError] = CommitError,
) -> CommitError:
    reason = f"{why}: {describe(error)}" if error is not None else why
    failure = kind(outcomes, transaction_id, reason)
    failure.__cause__ = error
    return failure


def _forget_if_lost(participants: list[Participant]) -> None:
    """Invalidate the connections the server dropped: SQLAlchemy then rolls nothing back there."""
    for participant in participants:
        try:
            lost = participant.driver.closed
        except Exception:
            lost = True
        if lost:
            with contextlib.suppress(Exception):
                participant.connection.invalidate()


def _roll_back(participants: list[Participant], outcomes: dict[Any, str]) -> None:
    for participant in participants:
        try:
            if participant.gid is not None:
                participant.rollback_prepared()
            else:
                participant.rollback()
        except Exception as error:  # a prepared one with no decision: recovery rolls it back
            log.warning("rollback of %s failed, left to recovery: %s", participant.shard, error)
        outcomes[participant.shard] = ROLLED_BACK


def best_effort(participants: list[Participant]) -> None:
    outcomes = {participant.shard: ROLLED_BACK for participant in participants}
    for position, participant in enumerate(participants):
        try:
            participant.commit()
        except Exception as error:
            outcomes[participant.shard] = IN_DOUBT if is_connection_lost(error) else ROLLED_BACK
            _roll_back(participants[position + 1 :], outcomes)
            raise _fail(
                outcomes, None, f"shard {participant.shard!r} failed to commit", error
            ) from error
        outcomes[participant.shard] = COMMITTED


def _commit_one(
    participant: Participant, outcomes: dict[Any, str], others: list[Participant]
) -> None:
    try:
        participant.commit()
    except Exception as error:
        outcomes[participant.shard] = IN_DOUBT if is_connection_lost(error) else ROLLED_BACK
        _roll_back(others, outcomes)
        raise _fail(
            outcomes, None, f"shard {participant.shard!r} failed to commit", error
        ) from error
    outcomes[participant.shard] = COMMITTED


def atomic(
    participants: list[Participant], mode: str, on_in_doubt: Callable[[], None] | None
) -> None:
    outcomes = {participant.shard: ROLLED_BACK for participant in participants}
    for participant in participants:
        try:
            participant.probe()
        except Exception as error:
            _roll_back([p for p in participants if p is not participant], outcomes)
            raise _fail(
                outcomes, None, f"shard {participant.shard!r} was lost before commit", error
            ) from error
    writers = [participant for participant in participants if participant.wrote]
    readers = [participant for participant in participants if not participant.wrote]
    for reader in readers:  # nothing to lose: their locks go now
        try:
            reader.commit()
            outcomes[reader.shard] = COMMITTED
        except Exception as error:
            log.info("read-only shard %s: commit failed (nothing written): %s", reader.shard, error)
    if len(writers) < 2:
        for writer in writers:
            _commit_one(writer, outcomes, [])
        return
    if any(writer.backend != "postgresql" for writer in writers):
        if mode == "auto":
            return best_effort(writers)  # SQLite, MariaDB: the documented best effort
        _roll_back(writers, outcomes)
        names = ", ".join(
            f"{w.shard!r} ({w.backend})" for w in writers if w.backend != "postgresql"
        )
        raise _fail(
            outcomes, None,
            f'commit="atomic" prepares the shards a transaction wrote, and {names} cannot '
            "prepare (shardalchemy prepares PostgreSQL only); choose "
            'ShardedSession(commit="best_effort")',
            None, TwoPhaseUnavailableError,
        )  # fmt: skip
    # the decider commits, it does not prepare: a server that cannot prepare may be it
    writers.sort(key=lambda writer: writer.can_prepare)
    decider, others = writers[0], writers[1:]
    unable = [writer for writer in others if not writer.can_prepare]
    if unable:
        _roll_back(writers, outcomes)
        names = ", ".join(f"{writer.shard!r}" for writer in [decider, *unable])
        raise _fail(
            outcomes, None,
            f"an atomic commit across shards prepares every shard it wrote but one, and the "
            f"servers of {names} have max_prepared_transactions = 0; {ENABLE_TWO_PHASE}",
            None, TwoPhaseUnavailableError,
        )  # fmt: skip
    transaction_id = decisions.new_transaction_id()
    try:
        decisions.ensure_table(decider.engine)
        decider.lock(decisions.lock_key(transaction_id))
    except Exception as error:
        _roll_back(writers, outcomes)
        raise _fail(outcomes, transaction_id, f"decider {decider.shard!r} failed", error) from error
    failpoints.reached("before_prepare", participants)
    for participant in others:
        try:
            participant.prepare(decisions.gid(transaction_id, decider.shard, participant.shard))
        except Exception as error:
            _roll_back([p for p in writers if p is not participant], outcomes)
            with contextlib.suppress(Exception):  # PostgreSQL aborted it when PREPARE failed
                participant.rollback()
            raise _fail(
                outcomes, transaction_id, f"shard {participant.shard!r} could not prepare", error
            ) from error
        failpoints.reached("after_prepare", participants)
    names = ",".join(quote(str(participant.shard), safe="") for participant in writers)
    try:
        decider.record_decision(transaction_id, names)
        failpoints.reached("before_decision_commit", participants)
        decider.commit()
    except Exception as error:
        if is_connection_lost(error):  # the decision may or may not be stored
            for participant in writers:
                outcomes[participant.shard] = IN_DOUBT
            if on_in_doubt is not None:
                on_in_doubt()
            raise _fail(
                outcomes, transaction_id,
                f"decider {decider.shard!r} was lost while committing the decision; "
                "recovery commits or rolls back every shard as its decision log says", error,
            ) from error  # fmt: skip
        _roll_back([decider, *others], outcomes)
        raise _fail(
            outcomes, transaction_id, f"decider {decider.shard!r} failed to commit", error
        ) from error
    failpoints.reached("after_decision", participants)
    left = False
    for participant in others:
        try:
            participant.commit_prepared()
        except Exception as error:
            # decided: committed.  The recoverer (or a later one) finishes this participant.
            if "does not exist" not in str(error):
                log.warning(
                    "transaction %s is committed; shard %s left prepared for recovery: %s",
                    transaction_id, participant.shard, error,
                )  # fmt: skip
                left = True
        failpoints.reached("after_commit_prepared", participants)
    if left and on_in_doubt is not None:
        on_in_doubt()
