"""The merged result of a multi-shard SELECT.

:class:`ShardedResult` is a SQLAlchemy ``Result``; it is built in
:mod:`shardalchemy._sqlalchemy.results`, because closing it reaches into the
shard results' private close hook.
"""

from .._sqlalchemy.results import ShardedResult

__all__ = ["ShardedResult"]
