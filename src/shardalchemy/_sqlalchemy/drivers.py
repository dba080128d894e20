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
