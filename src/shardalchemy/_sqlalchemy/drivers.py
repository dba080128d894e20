"""Private details of engines and DBAPI drivers (SQLAlchemy 2.0, pysqlite, aiosqlite).

Cancelling a running statement and making sure a SQLite transaction has
begun need the driver's own connection object, which SQLAlchemy's adapters
keep in private attributes.
"""

from __future__ import annotations

from typing import Any


def ensure_transaction_begun(connection: Any) -> None:
    """Make sure the database transaction of ``connection`` has really begun.

    pysqlite emits BEGIN only before the first INSERT/UPDATE/DELETE; a
    SAVEPOINT issued before that starts a transaction of its own, which its
    RELEASE would commit behind the session's back.  Other drivers begin on
    the first statement of any kind.
    """
    if connection.dialect.name != "sqlite":
        return
    dbapi_connection = connection.connection.dbapi_connection
    driver = getattr(dbapi_connection, "_connection", dbapi_connection)  # aiosqlite's adapter
    in_transaction = getattr(driver, "in_transaction", None)
    if in_transaction is False:
        connection.exec_driver_sql("BEGIN")


def in_greenlet() -> bool:
    """Whether this code runs inside SQLAlchemy's asyncio greenlet bridge (an AsyncSession)."""
    from sqlalchemy.util import concurrency

    check = getattr(concurrency, "in_greenlet", None)
    return bool(check()) if check is not None else False


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` says a statement was cancelled (by us, at a deadline or failure)."""
    import asyncio

    if isinstance(error, asyncio.CancelledError):
        return True
    original = getattr(error, "orig", None) or error
    sqlstate = getattr(original, "sqlstate", None) or getattr(
        getattr(original, "diag", None), "sqlstate", None
    )
    if sqlstate == "57014":  # PostgreSQL query_canceled
        return True
    arguments = getattr(original, "args", ())
    if arguments and arguments[0] == 1317:  # MariaDB/MySQL "Query execution was interrupted"
        return True
    return "interrupted" in str(original).lower()


def engine_of(bind: Any) -> Any:
    """The plain ``Engine`` behind a bind: ``execution_options()`` copies proxy theirs.

    ``OptionEngine._proxied`` (SQLAlchemy 2.0) is the engine whose pool and
    events a copy shares; pools and event listeners belong to it.
    """
    engine = getattr(bind, "_proxied", bind)
    while hasattr(engine, "_proxied"):
        engine = engine._proxied
    return engine


def sqlite_connection(driver_connection: Any) -> Any:
    """The ``sqlite3.Connection`` behind a driver connection (aiosqlite wraps one in ``_conn``)."""
    return getattr(driver_connection, "_conn", driver_connection)


# -- deadlines: reaching a running statement's driver connection and its socket ----------------


def driver_connection(connection: Any) -> Any:
    """The driver's own connection under a SQLAlchemy ``Connection`` (unwrapped for asyncio)."""
    dbapi_connection = connection.connection.dbapi_connection
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def socket_of(driver: Any) -> int | None:
    """The file descriptor of the socket a driver connection talks to its server on, if any.

    psycopg (2 and 3, sync and async) have a public ``fileno()``; PyMySQL keeps its socket in
    ``_sock``, asyncpg its transport in ``_transport``, aiomysql its stream in ``_writer``.
    SQLite has none (``None``).
    """
    try:
        module = type(driver).__module__.split(".")[0]
        if module in ("psycopg", "psycopg2"):
            return int(driver.fileno())
        if module == "pymysql":
            sock = driver._sock
            return None if sock is None else int(sock.fileno())
        if module == "asyncpg":
            transport = driver._transport
        elif module == "aiomysql":
            writer = driver._writer
            transport = None if writer is None else writer.transport
        else:
            return None
        sock = None if transport is None else transport.get_extra_info("socket")
        return None if sock is None else int(sock.fileno())
    except Exception:  # closed already, or a driver version that keeps it elsewhere
        return None


def shut_down_socket(descriptor: int) -> bool:
    """Shut a connection's socket down, so a thread (or task) blocked reading it returns now.

    Through a duplicate of the descriptor: ``shutdown`` acts on the socket itself, which the
    driver keeps owning (and closes, as a broken connection, when SQLAlchemy invalidates it).
    Closing the driver's own descriptor from another thread instead could close one the
    operating system has just handed to a new connection.  Returns whether it was shut down.
    """
    import os
    import socket

    try:
        duplicate = socket.socket(fileno=os.dup(descriptor))
    except OSError:
        return False
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:  # not connected any more: nothing is waiting on it
        return False
    finally:
        duplicate.close()


def side_connection(engine: Any, timeout: float) -> Any:
    """A new DBAPI connection to ``engine``'s database, outside its pool, with short timeouts.

    For ``pg_cancel_backend()`` / ``KILL QUERY`` while the statement's own connection is
    busy.  Outside the pool, because the pool may be exhausted by the very statements being
    cancelled, and its connections were made without a connect timeout; with one, because a
    server that stopped answering accepts a TCP connection and then says nothing.  Made as the
    engine makes its own (``create_connect_args()`` and ``do_connect`` listeners); the
    ``connect_args`` given to ``create_engine`` are not seen (SQLAlchemy keeps them in the
    pool's private creator), so a server that needs one of them refuses this connection and
    the statement is abandoned at the end of the grace instead.
    """
    engine = engine_of(engine)
    dialect = engine.dialect
    arguments, parameters = dialect.create_connect_args(engine.url)
    parameters = dict(parameters)
    seconds = max(1, round(timeout))
    if dialect.driver in ("psycopg", "psycopg2"):
        parameters["connect_timeout"] = max(2, seconds)  # libpq's least
    elif dialect.driver in ("pymysql", "mysqldb"):
        parameters.update(connect_timeout=seconds, read_timeout=seconds, write_timeout=seconds)
    for listener in dialect.dispatch.do_connect:
        made = listener(dialect, None, arguments, parameters)
        if made is not None:
            return made
    return dialect.connect(*arguments, **parameters)


def is_statement_timeout(error: BaseException) -> bool:
    """Whether ``error`` is the server's own statement timeout (set by a deadline).

    PostgreSQL: ``57014`` "canceling statement due to statement timeout"; MariaDB: 1969
    "Query execution was interrupted (max_statement_time exceeded)".
    """
    original = getattr(error, "orig", None) or error
    arguments = getattr(original, "args", ())
    if arguments and arguments[0] == 1969:
        return True
    return is_cancellation(error) and "statement timeout" in str(original).lower()
