"""The one door to SQLAlchemy's private API.

Every access shardalchemy makes to a private (``_underscored``) attribute of a
SQLAlchemy object, or of a driver's connection, lives in this package, one
module per subsystem, each saying why it is needed and since which version:

- :mod:`.elements`: annotations, anonymous bind names, label references, cache keys;
- :mod:`.selects`: the clauses of a SELECT;
- :mod:`.dml`: the rows and RETURNING of INSERT and UPDATE;
- :mod:`.orm_execute`: identity tokens and loader paths of ORM executions;
- :mod:`.sessions`: the session's execution and bulk-persistence internals;
- :mod:`.results`: building merged results from shard results;
- :mod:`.dialects`: per-shard dialect copies for the ``tables`` placement;
- :mod:`.drivers`: engines behind proxies, DBAPI connections behind adapters.

An upgrade of SQLAlchemy that changes one of these touches this package only.
``tests/test_private_api.py`` walks every other module and fails on a private
SQLAlchemy attribute used outside it.
"""
