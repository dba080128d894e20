"""What kind of failure a database error is: transient, a lost connection, or about a row.

The one place that knows drivers' error codes (PostgreSQL SQLSTATEs through
psycopg and asyncpg, MariaDB/MySQL errnos through PyMySQL and aiomysql,
SQLite's result codes through sqlite3 and aiosqlite) and the attributes they
hide them in.  The rest of the library asks four questions:

- :func:`is_transient`: would the same work, tried again, likely succeed? (a
  lock wait, a deadlock, a timeout, a lost connection, a server going down)
- :func:`is_connection_lost`: is the database connection gone, taking its
  transaction and savepoints with it?
- :func:`is_transaction_lost`: did the server roll the whole transaction back
  (its savepoints with it), so that no ROLLBACK TO SAVEPOINT can succeed?
- :func:`blames_the_shard`: is the error about the shard or the statement as
  a whole (transient, or a permanent state of the shard such as a full disk or
  a missing privilege) rather than about any row, so that no search for a
  refused row can find one?

Example (a real error is read the same way; these are the drivers' own types):

>>> import sqlite3
>>> is_transient(sqlite3.OperationalError("database is locked"))
True
>>> is_transient(sqlite3.IntegrityError("UNIQUE constraint failed: cities.id"))
False
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# -- PostgreSQL (SQLSTATE) ------------------------------------------------------------------

POSTGRESQL_TRANSIENT_STATES = {
    # class 40, transaction rollback: the server gave up this transaction's work
    # because of others; the same work in a new transaction can succeed
    "40001": "serialization_failure: a concurrent transaction changed what this one read",
    "40P01": "deadlock_detected: two transactions waited on each other, this one was chosen",
    "40003": "statement_completion_unknown: the connection broke before the outcome was told",
    # class 55, object not in prerequisite state
    "55P03": "lock_not_available: lock_timeout expired (or NOWAIT) on a lock another holds",
    # class 57, operator intervention
    "57014": "query_canceled: statement_timeout expired, or the statement was cancelled",
    "57P01": "admin_shutdown: the backend was terminated (pg_terminate_backend, fast shutdown)",
    "57P02": "crash_shutdown: another backend crashed and the server is restarting",
    "57P03": "cannot_connect_now: the server is starting up or shutting down",
    "57P05": "idle_session_timeout: the server closed a session left idle too long",
    # class 25, invalid transaction state
    "25P03": "idle_in_transaction_session_timeout: the server ended an idle transaction",
    # class 53, insufficient resources: pressure of the moment, gone when others finish.
    # Not 53100 disk_full: it lasts until an operator frees space.
    "53000": "insufficient_resources",
    "53200": "out_of_memory: the server could not allocate memory for this statement",
    "53300": "too_many_connections: every connection slot is taken, for now",
    "53400": "configuration_limit_exceeded: e.g. out of shared lock table slots",
}

# class 08, connection exception: the client lost (or never had) its connection.
# All of it is transient except 08P01 protocol_violation, which is a client or
# server bug that a retry repeats.
POSTGRESQL_CONNECTION_CLASS = "08"
POSTGRESQL_NOT_TRANSIENT_CONNECTION_STATES = {"08P01"}

# The backend ends its connection after sending these: the connection is gone.
POSTGRESQL_CONNECTION_LOST_STATES = {"57P01", "57P02", "57P03", "57P05", "25P03", "40003"}

# Permanent, and about the shard or the statement, never about one row.
POSTGRESQL_SHARD_STATES = {
    "53100": "disk_full",
    "25006": "read_only_sql_transaction: a standby, or default_transaction_read_only",
    "42501": "insufficient_privilege",
    "42P01": "undefined_table: the shard lacks the table",
    "3D000": "invalid_catalog_name: the shard's database does not exist",
    "57P04": "database_dropped",
}
POSTGRESQL_SHARD_CLASSES = {"58", "XX"}  # system errors (I/O), internal errors

# -- MariaDB / MySQL (errno) -----------------------------------------------------------------

MYSQL_TRANSIENT_ERRNOS = {
    1205: "ER_LOCK_WAIT_TIMEOUT: innodb_lock_wait_timeout expired on a row another holds",
    1213: "ER_LOCK_DEADLOCK: InnoDB chose this transaction as a deadlock's victim",
    1020: "ER_CHECKREAD: the row changed since it was read (MariaDB snapshot isolation)",
    1317: "ER_QUERY_INTERRUPTED: KILL QUERY, or a timeout, interrupted the statement",
    1969: "ER_STATEMENT_TIMEOUT: MariaDB's max_statement_time expired",
    3024: "ER_QUERY_TIMEOUT: MySQL's max_execution_time expired",
    3572: "ER_LOCK_NOWAIT: MySQL's NOWAIT found the row locked",
    1412: "ER_TABLE_DEF_CHANGED: a concurrent DDL changed the table; retry the transaction",
    1040: "ER_CON_COUNT_ERROR: too many connections, for now",
    1053: "ER_SERVER_SHUTDOWN: the server is shutting down",
    1927: "ER_CONNECTION_KILLED: MariaDB's KILL ended the connection",
    1158: "ER_NET_READ_ERROR: the server got an error reading from the network",
    1159: "ER_NET_READ_INTERRUPTED: the server timed out reading from the network",
    1160: "ER_NET_ERROR_ON_WRITE: the server got an error writing to the network",
    1161: "ER_NET_WRITE_INTERRUPTED: the server timed out writing to the network",
    2002: "CR_CONNECTION_ERROR: cannot connect through the socket (server down)",
    2003: "CR_CONN_HOST_ERROR: cannot connect to the server (server down)",
    2006: "CR_SERVER_GONE_ERROR: the server has gone away",
    2013: "CR_SERVER_LOST: the connection was lost during a query",
    2055: "CR_SERVER_LOST_EXTENDED: the connection was lost during a query",
    4031: "ER_CLIENT_INTERACTION_TIMEOUT: the server closed a connection idle too long",
}

MYSQL_CONNECTION_LOST_ERRNOS = {1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031, 1158, 1160}

# InnoDB rolls the whole transaction back on a deadlock (and every savepoint
# with it); on a lock wait timeout only the statement, unless the server runs
# with innodb_rollback_on_timeout, which batch code learns when the savepoint's
# rollback fails.
MYSQL_TRANSACTION_LOST_ERRNOS = {1213, 1020}

MYSQL_SHARD_ERRNOS = {
    1021: "ER_DISK_FULL",
    1114: "ER_RECORD_FILE_FULL: the table is full",
    1036: "ER_OPEN_AS_READONLY: the table is read-only",
    1290: "ER_OPTION_PREVENTS_STATEMENT: the server runs --read-only",
    1792: "ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION",
    1142: "ER_TABLEACCESS_DENIED_ERROR: no privilege on the table",
    1143: "ER_COLUMNACCESS_DENIED_ERROR: no privilege on a column",
    1044: "ER_DBACCESS_DENIED_ERROR: no privilege on the database",
    1146: "ER_NO_SUCH_TABLE: the shard lacks the table",
    1049: "ER_BAD_DB_ERROR: the shard's database does not exist",
}

# -- SQLite (result codes, primary code = extended & 0xFF) -------------------------------------

SQLITE_TRANSIENT_CODES = {
    5: "SQLITE_BUSY: another connection holds a lock on the file past the busy timeout",
    6: "SQLITE_LOCKED: a conflict within one shared-cache or one connection",
    9: "SQLITE_INTERRUPT: sqlite3_interrupt() stopped the statement (a cancellation)",
}
SQLITE_SHARD_CODES = {
    13: "SQLITE_FULL: the disk is full",
    8: "SQLITE_READONLY: the file or database is read-only",
    10: "SQLITE_IOERR: an I/O error",
    11: "SQLITE_CORRUPT: the database file is corrupt",
}
# Python 3.10's sqlite3 (and drivers that wrap its errors in new ones) carry
# no result code: these are SQLite's own messages for the codes above.
SQLITE_TRANSIENT_MESSAGES = ("database is locked", "database table is locked", "interrupted")

# -- reading an error -------------------------------------------------------------------------


def _layers(error: BaseException) -> Iterator[BaseException]:
    """``error``, the driver's error SQLAlchemy wrapped (``.orig``), and their causes.

    asyncpg's and psycopg's async adapters chain the driver's own exception
    as ``__cause__`` of the DBAPI error SQLAlchemy sees.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        layer = pending.pop(0)
        if layer is None or id(layer) in seen or len(seen) > 8:
            continue
        seen.add(id(layer))
        yield layer
        original = getattr(layer, "orig", None)
        if isinstance(original, BaseException):
            pending.append(original)
        pending.append(layer.__cause__)


def _sqlstate(layer: BaseException) -> str | None:
    # psycopg: .sqlstate (and .diag.sqlstate); asyncpg: .sqlstate, SQLAlchemy's
    # asyncpg adapter copies it to its own error; psycopg2: .pgcode.  PyMySQL's
    # errors carry a .sqlstate too, mostly the generic HY000: its errno decides.
    if _is_mysql_error(layer):
        return None
    for holder in (layer, getattr(layer, "diag", None)):
        for name in ("sqlstate", "pgcode"):
            value = getattr(holder, name, None)
            if isinstance(value, str) and len(value) == 5:
                return value
    return None


def _mysql_errno(layer: BaseException) -> int | None:
    # PyMySQL / aiomysql / mysqlclient: args = (errno, message)
    arguments = getattr(layer, "args", ())
    errno = arguments[0] if arguments else None
    if type(errno) is int and 1000 <= errno < 10000 and _is_mysql_error(layer):
        return errno
    return None


def _is_mysql_error(layer: BaseException) -> bool:
    module = type(layer).__module__
    return module.startswith(("pymysql", "aiomysql", "MySQLdb", "mariadb", "mysql"))


def _sqlite_code(layer: BaseException) -> int | None:
    # sqlite3.Error.sqlite_errorcode (Python 3.11+); aiosqlite raises sqlite3's errors
    code = getattr(layer, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_sqlite_error(layer: BaseException) -> bool:
    return type(layer).__module__.startswith(("sqlite3", "aiosqlite"))


def _asyncpg_connection_gone(layer: BaseException) -> bool:
    # asyncpg raises these (no SQLSTATE) when its connection is closed under it
    names = {klass.__name__ for klass in type(layer).__mro__}
    return type(layer).__module__.startswith("asyncpg") and bool(
        names & {"ConnectionDoesNotExistError", "ConnectionFailureError", "InterfaceError"}
    )


def _invalidated(layer: BaseException) -> bool:
    # SQLAlchemy's DBAPIError: the dialect recognised a disconnect and
    # invalidated the connection
    return bool(getattr(layer, "connection_invalidated", False))


def is_connection_lost(error: BaseException) -> bool:
    """Whether ``error`` means the database connection is gone (its transaction with it).

    >>> is_connection_lost(ConnectionResetError("reset by peer"))
    True
    """
    for layer in _layers(error):
        if _invalidated(layer) or isinstance(layer, ConnectionError):
            return True
        state = _sqlstate(layer)
        if state is not None:
            if state in POSTGRESQL_CONNECTION_LOST_STATES:
                return True
            if state.startswith(POSTGRESQL_CONNECTION_CLASS):
                return True
        errno = _mysql_errno(layer)
        if errno is not None and errno in MYSQL_CONNECTION_LOST_ERRNOS:
            return True
        if _asyncpg_connection_gone(layer):
            return True
    return False


def is_transaction_lost(error: BaseException) -> bool:
    """Whether the server rolled the whole transaction back (no savepoint survives).

    A lost connection, or an InnoDB deadlock (InnoDB undoes the victim's whole
    transaction, PostgreSQL only the statement).
    """
    if is_connection_lost(error):
        return True
    return any(_mysql_errno(layer) in MYSQL_TRANSACTION_LOST_ERRNOS for layer in _layers(error))


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the moment: the same work, retried, may well succeed.

    Lock waits, deadlocks, serialization failures, timeouts and cancellations,
    lost connections, servers shutting down or out of connections.  A retry
    means the whole transaction: after most of these the server has rolled
    back at least the statement, after some the whole transaction.

    >>> import sqlite3
    >>> is_transient(sqlite3.OperationalError("database is locked"))
    True
    >>> is_transient(ValueError("not a database error"))
    False
    """
    from sqlalchemy import exc

    for layer in _layers(error):
        if isinstance(layer, exc.TimeoutError):  # the pool had no connection to give in time
            return True
        if _invalidated(layer) or isinstance(layer, ConnectionError | TimeoutError):
            return True
        state = _sqlstate(layer)
        if state is not None:
            if state in POSTGRESQL_TRANSIENT_STATES:
                return True
            if (
                state.startswith(POSTGRESQL_CONNECTION_CLASS)
                and state not in POSTGRESQL_NOT_TRANSIENT_CONNECTION_STATES
            ):
                return True
            continue  # another SQLSTATE: the database told what it is, and it is not this
        errno = _mysql_errno(layer)
        if errno is not None:
            if errno in MYSQL_TRANSIENT_ERRNOS:
                return True
            continue
        if _asyncpg_connection_gone(layer):
            return True
        if _is_sqlite_error(layer):
            code = _sqlite_code(layer)
            if code is not None:
                if code in SQLITE_TRANSIENT_CODES:
                    return True
                continue
            message = str(layer).lower()
            if any(text in message for text in SQLITE_TRANSIENT_MESSAGES):
                return True
    return False


def blames_the_shard(error: BaseException) -> bool:
    """Whether ``error`` is about the shard or the whole statement, never about one row.

    Transient failures, and permanent states of the shard: a full disk, a
    read-only server, a missing privilege or table.  Searching the rows for
    the one to blame finds none there (or blames an innocent first row).

    >>> import sqlite3
    >>> blames_the_shard(sqlite3.IntegrityError("NOT NULL constraint failed: cities.name"))
    False
    """
    if is_transient(error) or is_connection_lost(error):
        return True
    for layer in _layers(error):
        state = _sqlstate(layer)
        if state is not None and (
            state in POSTGRESQL_SHARD_STATES or state[:2] in POSTGRESQL_SHARD_CLASSES
        ):
            return True
        if _mysql_errno(layer) in MYSQL_SHARD_ERRNOS:
            return True
        if _is_sqlite_error(layer) and _sqlite_code(layer) in SQLITE_SHARD_CODES:
            return True
    return False


def describe(error: BaseException) -> str:
    """The driver's own first line of ``error`` (SQLAlchemy's wrapping and SQL left out).

    >>> import sqlite3
    >>> describe(sqlite3.OperationalError("database is locked"))
    'database is locked'
    """
    original: Any = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__
