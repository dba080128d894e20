"""Function calls per single-shard point SELECT: a count that machine noise does not move.

Usage::

    .venv/bin/python bench/bench_routing_calls.py [--queries 4000]

Runs ``--queries`` point SELECTs (``select(Account).where(Account.id == :id)``, the model of
``bench_routing.py``) through a declarative ShardedSession over 4 SQLite shard files, under
cProfile, and prints one JSON line: total function calls, calls per query and the profiled
time. Compare two checkouts by running each one's copy of this file.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile

from bench_routing import SHARDS, Account, Base
from sqlalchemy import bindparam, insert, select

from shardalchemy import ShardMap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=4000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        shard_map = ShardMap.databases({s: f"sqlite:///{directory}/{s}.db" for s in SHARDS})
        shard_map.create_all(Base.metadata)
        rows = [{"id": i, "name": "x", "balance": 1} for i in range(1, 2001)]
        with shard_map.sessionmaker()() as session:
            session.execute(insert(Account), rows)
            session.commit()
        statement = select(Account).where(Account.id == bindparam("id"))
        make_session = shard_map.sessionmaker()

        def work() -> None:
            with make_session() as session:
                for i in range(options.queries):
                    session.execute(statement, {"id": i % 2000 + 1}).scalar_one()

        work()  # warm the caches: compiled SQL, routing shapes
        profile = cProfile.Profile()
        profile.runcall(work)
        stats = pstats.Stats(profile)
        shard_map.dispose()
    print(
        json.dumps(
            {
                "benchmark": "routing_calls",
                "queries": options.queries,
                "calls": stats.total_calls,  # type: ignore[attr-defined]
                "calls_per_query": round(stats.total_calls / options.queries, 2),  # type: ignore[attr-defined]
                "profiled_seconds": round(stats.total_tt, 3),  # type: ignore[attr-defined]
            }
        )
    )


if __name__ == "__main__":
    main()
