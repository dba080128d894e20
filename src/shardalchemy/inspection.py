"""Watching what reaches the shards: every SQL statement, with its shard.

Example:

>>> with StatementLog(shard_map) as log:
...     session.scalars(select(City).where(City.continent == "Asia")).all()
[City('Tokyo')]
>>> log.shards()
['asia']
>>> print(log.statements("asia")[0])
SELECT asia_cities.id, ... FROM asia_cities WHERE asia_cities.continent = ?
>>> with StatementLog(shard_map) as log:  # the id does not carry the shard: every shard
...     session.get(City, 2)
City('London')
>>> log.counts()
Counter({'asia': 1, 'europe': 1, 'north_america': 1, 'south_america': 1})
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ._sqlalchemy import drivers

SHARD_OPTION = "shardalchemy_shard"
"""The execution option each shard's engine carries, naming its shard."""


@dataclasses.dataclass(frozen=True)
class ExecutedStatement:
    """One statement as sent to the driver, and the shard it ran on."""

    shard: str | None
    sql: str
    parameters: Any
    executemany: bool


class StatementLog:
    """Record the SQL sent to each shard of a shard map while the block runs.

    Statements on connections that belong to no shard are recorded with
    ``shard=None``.  Thread-safe.
    """

    def __init__(self, shard_map: Any) -> None:
        self.entries: list[ExecutedStatement] = []
        self._engines: list[Engine] = []
        for bind in shard_map.binds().values():
            engine = drivers.engine_of(bind)
            if all(engine is not seen for seen in self._engines):
                self._engines.append(engine)
        self._lock = threading.Lock()

    def _listener(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        options = context.execution_options if context is not None else conn.get_execution_options()
        entry = ExecutedStatement(options.get(SHARD_OPTION), statement, parameters, executemany)
        with self._lock:
            self.entries.append(entry)

    def __enter__(self) -> StatementLog:
        for engine in self._engines:
            event.listen(engine, "before_cursor_execute", self._listener)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for engine in self._engines:
            event.remove(engine, "before_cursor_execute", self._listener)

    def shards(self) -> list[str | None]:
        """The distinct shards that received statements, in first-use order."""
        return list(dict.fromkeys(entry.shard for entry in self.entries))

    def counts(self) -> Counter[str | None]:
        """How many statements each shard received."""
        return Counter(entry.shard for entry in self.entries)

    def statements(self, shard: str | None = None) -> list[str]:
        """The SQL text of every recorded statement, or of those on ``shard``."""
        return [e.sql for e in self.entries if shard is None or e.shard == shard]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        with self._lock:
            self.entries.clear()
