"""The ORM room: :class:`ShardedSession` wires routing, planning and execution into SQLAlchemy.

- :mod:`.session`: construction, binds and hook wiring;
- :mod:`.placement`: where new objects go, which shards an identity may be on;
- :mod:`.execute`: the ``do_orm_execute`` handler and the fast path;
- :mod:`.guards`: nothing may change the value that decides a row's shard;
- :mod:`.results`: :class:`ShardedResult`, the merged result.
"""

from .results import ShardedResult
from .session import ShardedSession

__all__ = ["ShardedResult", "ShardedSession"]
