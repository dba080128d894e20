"""Single-shard point SELECTs per second: automatic routing vs a plain Session.

Usage::

    .venv/bin/python bench/bench_routing.py [--backend sqlite|postgresql] [--url URL]
        [--rows 10000] [--queries 5000] [--repeats 7]

Prints one JSON line: queries/s through the declarative ShardedSession (the
router picks the shard from ``WHERE id = :id``), through a plain
``Session`` bound to that shard's engine, through SQLAlchemy's
``horizontal_shard.ShardedSession`` with a hand-written one-line chooser,
and the ratios (plain / sharded: 1.00 means no overhead).  "floor" is a plain
Session whose only hook sets SQLAlchemy's identity token, the minimum any
sharded session pays to keep one identity per shard.  Each variant runs
``--repeats`` times, interleaved, and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from typing import Any

from sqlalchemy import BigInteger, String, bindparam, create_engine, event, select, text
from sqlalchemy.ext import horizontal_shard
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shardalchemy import Hash, ShardKey, ShardMap

SHARDS = ["s0", "s1", "s2", "s3"]
STRATEGY = Hash(buckets=1024, shards=SHARDS)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bench_accounts"
    __sharding__ = ShardKey("id", STRATEGY)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    balance: Mapped[int]


def build(backend: str, url: str | None, workdir: str) -> ShardMap:
    if backend == "sqlite":
        return ShardMap.databases({shard: f"sqlite:///{workdir}/{shard}.db" for shard in SHARDS})
    base = url or "postgresql+psycopg://postgres@127.0.0.1/postgres"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    urls = {}
    with admin.connect() as connection:
        for shard in SHARDS:
            name = f"shardalchemy_bench_{shard}"
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            connection.execute(text(f"CREATE DATABASE {name}"))
            urls[shard] = admin.url.set(database=name).render_as_string(hide_password=False)
    admin.dispose()
    return ShardMap.databases(urls)


def load(shard_map: ShardMap, rows: int) -> dict[str, list[int]]:
    shard_map.create_all(Base.metadata)
    by_shard: dict[str, list[int]] = {shard: [] for shard in SHARDS}
    for i in range(1, rows + 1):
        by_shard[STRATEGY.shard_for(i)].append(i)
    for shard, ids in by_shard.items():
        with shard_map.bind(shard).begin() as connection:
            connection.execute(
                Account.__table__.insert(),
                [{"id": i, "name": f"a{i}", "balance": i} for i in ids],
            )
    return by_shard


def timed(fn: Any, ids: list[int]) -> float:
    start = time.perf_counter()
    fn(ids)
    return len(ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--url")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        shard_map = build(args.backend, args.url, workdir)
        by_shard = load(shard_map, args.rows)
        shard = SHARDS[0]
        rng = random.Random(1)
        ids = [rng.choice(by_shard[shard]) for _ in range(args.queries)]
        # the same statement for every variant: one shape, the id bound per execution
        statement = select(Account).where(Account.id == bindparam("id"))

        sharded = shard_map.sessionmaker()()
        plain = Session(bind=shard_map.bind(shard))
        extension = horizontal_shard.ShardedSession(
            shards=shard_map.binds(),
            shard_chooser=lambda mapper, instance, clause=None: shard,
            identity_chooser=lambda *a, **kw: SHARDS,
            execute_chooser=lambda context: [STRATEGY.shard_for(context.parameters["id"])],
        )

        # the floor: what any session that keeps SQLAlchemy's identity-token
        # semantics pays, a do_orm_execute hook that only sets the token
        floor = Session(bind=shard_map.bind(shard))

        @event.listens_for(floor, "do_orm_execute")
        def set_identity_token(context: Any) -> None:
            context.update_execution_options(identity_token=shard)

        def runner(session: Session) -> Any:
            def run(ids: list[int]) -> None:
                for i in ids:
                    session.execute(statement, {"id": i}).scalar_one()
                    session.expunge_all()

            return run

        variants = {
            "sharded": runner(sharded),
            "plain": runner(plain),
            "extension": runner(extension),
            "floor": runner(floor),
        }
        results: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():  # warm up caches and connections
            fn(ids[:200])
        for _ in range(args.repeats):
            for name, fn in variants.items():
                results[name].append(timed(fn, ids))
        medians = {name: statistics.median(values) for name, values in results.items()}
        for session in (sharded, plain, extension, floor):
            session.close()
        shard_map.dispose()
    print(
        json.dumps(
            {
                "benchmark": "routing_point_select",
                "backend": args.backend,
                "queries": args.queries,
                "repeats": args.repeats,
                "qps_sharded": round(medians["sharded"]),
                "qps_plain_session": round(medians["plain"]),
                "qps_sqlalchemy_extension": round(medians["extension"]),
                "qps_identity_token_floor": round(medians["floor"]),
                "ratio_sharded": round(medians["plain"] / medians["sharded"], 3),
                "ratio_extension": round(medians["plain"] / medians["extension"], 3),
                "ratio_identity_token_floor": round(medians["plain"] / medians["floor"], 3),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
