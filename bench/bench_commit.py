"""Commit latency and transfer throughput across PostgreSQL shards: atomic vs best effort.

Usage::

    .venv/bin/python bench/bench_commit.py [--url postgresql+psycopg://postgres@127.0.0.1/postgres]
        [--transactions 300] [--repeats 5] [--threads 4] [--seconds 3]

It creates the databases ``shardalchemy_commit_s0`` .. ``shardalchemy_commit_s3`` (one
per shard, the ``database`` placement) and ``shardalchemy_commit_one`` (the unsharded
reference) on the server of ``--url`` (dropping them first), and drops them at the end.
The model is keyed by its ``shard`` column (``Function``), so a row goes where it says.

``latency``
    a transaction that adds one row to each of 1, 2 and 4 shards, through a
    ``ShardedSession(commit="atomic")`` and a ``ShardedSession(commit="best_effort")``.
    The rows are flushed first (not timed); ``session.commit()`` is timed.  With one
    shard both modes take SQLAlchemy's own one-phase COMMIT.
``single_shard``
    one row on shard s0 through a ``ShardedSession`` (default ``commit="auto"``: today's
    code path) vs a plain SQLAlchemy ``Session`` on the one unsharded database, timed
    the same way (flush not timed, ``commit()`` timed).
``transfers``
    ``--threads`` threads, each with its own session per transfer, move 1 from a random
    account of one shard to a random account of another (of 4 shards, 100 accounts
    each) for ``--seconds``; the UPDATEs run in (shard, id) order so that no two
    transfers wait on each other across databases (which PostgreSQL cannot detect).
    Transfers per second, atomic vs best effort; the sum of balances is checked after
    every run.

Every repeat runs each latency variant ``--transactions`` times, interleaved one
transaction at a time (the variants see the same noise); a repeat's figure is the median
of its transactions, and the median over the repeats is reported, with min/max in
``spread``.  The transfer runs alternate the two modes, ``--repeats`` times each.

Prints one JSON line: medians in milliseconds (``commit_ms``), transfers/s, and the ratios
``atomic_vs_best_effort_<n>`` (target <= 1.5 for 2 and 4 shards),
``single_shard_vs_plain`` (target <= 1.03) and ``transfers_atomic_vs_best_effort``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from _databases import create_databases, database_urls, drop_databases, render
from _machine import machine
from sqlalchemy import Integer, String, create_engine, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, sessionmaker

from shardalchemy import Function, ShardKey, ShardMap

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/postgres"
DATABASE_PREFIX = "shardalchemy_commit"
SHARDS = ["s0", "s1", "s2", "s3"]
ACCOUNTS = 100
WIDTHS = (1, 2, 4)
MODES = ("atomic", "best_effort")
TARGETS = {"atomic_vs_best_effort": 1.5, "single_shard_vs_plain": 1.03}


class Base(DeclarativeBase):
    pass


def _by_shard(value: Any) -> str:
    return str(value)


class Row(Base):
    __tablename__ = "commit_rows"
    __sharding__ = ShardKey("shard", Function(_by_shard))
    shard = mapped_column(String(10), primary_key=True)
    id = mapped_column(Integer, primary_key=True, autoincrement=False)
    value = mapped_column(Integer, nullable=False)


class Account(Base):
    __tablename__ = "commit_accounts"
    __sharding__ = ShardKey("shard", Function(_by_shard))
    shard = mapped_column(String(10), primary_key=True)
    id = mapped_column(Integer, primary_key=True, autoincrement=False)
    balance = mapped_column(Integer, nullable=False)


_ids = itertools.count(1)


def timed_commit(factory: Callable[[], Session], shards: list[str]) -> float:
    """Seconds ``commit()`` takes after one row per shard was flushed."""
    with factory() as session:
        number = next(_ids)
        session.add_all([Row(shard=shard, id=number, value=number) for shard in shards])
        session.flush()
        start = time.perf_counter()
        session.commit()
        return time.perf_counter() - start


def transfers(factory: Callable[[], Session], threads: int, seconds: float, seed: int) -> float:
    """Transfers per second of ``threads`` threads moving 1 across shards for ``seconds``."""
    done = [0] * threads
    failures: list[BaseException] = []
    stop = threading.Event()

    def work(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        try:
            while not stop.is_set():
                source, target = rng.sample(SHARDS, 2)
                moves = sorted(
                    [(source, rng.randrange(ACCOUNTS), -1), (target, rng.randrange(ACCOUNTS), 1)]
                )
                with factory() as session:
                    for shard, account, amount in moves:
                        session.execute(
                            update(Account)
                            .where(Account.shard == shard, Account.id == account)
                            .values(balance=Account.balance + amount)
                        )
                    session.commit()
                done[index] += 1
        except BaseException as error:  # reported by the caller
            failures.append(error)
            stop.set()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return sum(done) / elapsed


def balance_sum(factory: Callable[[], Session]) -> int:
    with factory() as session:
        return sum(
            int(session.scalar(select(func.sum(Account.balance)).where(Account.shard == s)) or 0)
            for s in SHARDS
        )


def summary(values: list[float], scale: float = 1.0, digits: int = 3) -> tuple[float, list[float]]:
    return (
        round(statistics.median(values) * scale, digits),
        [round(min(values) * scale, digits), round(max(values) * scale, digits)],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    base = make_url(args.url)
    shard_urls, one_url = database_urls(base, DATABASE_PREFIX, SHARDS)
    names = [str(url.database) for url in (*shard_urls.values(), one_url)]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        server = connection.exec_driver_sql("SHOW server_version").scalar_one()
    create_databases(admin, names)
    try:
        shard_map = ShardMap.databases({shard: render(url) for shard, url in shard_urls.items()})
        shard_map.create_all(Base.metadata)
        one = create_engine(render(one_url))
        Base.metadata.create_all(one)
        factories = {mode: shard_map.sessionmaker(commit=mode) for mode in MODES}
        auto = shard_map.sessionmaker()
        plain = sessionmaker(bind=one)
        with auto() as session:
            session.add_all(
                [Account(shard=s, id=i, balance=1000) for s in SHARDS for i in range(ACCOUNTS)]
            )
            session.commit()
        expected = balance_sum(auto)

        variants: dict[str, Callable[[], float]] = {}
        for width in WIDTHS:
            for mode in MODES:
                variants[f"{mode}_{width}"] = lambda f=factories[mode], s=SHARDS[:width]: (
                    timed_commit(f, s)
                )
        variants["single_shard_sharded"] = lambda: timed_commit(auto, SHARDS[:1])
        variants["single_shard_plain"] = lambda: timed_commit(plain, SHARDS[:1])

        names_in_order = list(variants)
        for _ in range(20):  # warm up pools, caches, the decision table
            for name in names_in_order:
                variants[name]()
        per_repeat: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            samples: dict[str, list[float]] = {name: [] for name in variants}
            for i in range(args.transactions):
                shift = (i + repeat) % len(names_in_order)
                for name in names_in_order[shift:] + names_in_order[:shift]:
                    samples[name].append(variants[name]())
            for name, values in samples.items():
                per_repeat[name].append(statistics.median(values))

        throughput: dict[str, list[float]] = {mode: [] for mode in MODES}
        for repeat in range(args.repeats):
            for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                throughput[mode].append(
                    transfers(factories[mode], args.threads, args.seconds, repeat)
                )
                found = balance_sum(auto)
                if found != expected:
                    raise SystemExit(f"{mode} transfers: balance sum {found} != {expected}")

        commit_ms: dict[str, float] = {}
        spread: dict[str, Any] = {}
        for name, values in per_repeat.items():
            commit_ms[name], spread[name] = summary(values, 1000.0)
        per_s: dict[str, float] = {}
        for mode, values in throughput.items():
            per_s[mode], spread[f"transfers_{mode}"] = summary(values, 1.0, 1)
        median = {name: statistics.median(values) for name, values in per_repeat.items()}
        ratios = {
            f"atomic_vs_best_effort_{w}": round(
                median[f"atomic_{w}"] / median[f"best_effort_{w}"], 3
            )
            for w in WIDTHS
        }
        ratios["single_shard_vs_plain"] = round(
            median["single_shard_sharded"] / median["single_shard_plain"], 3
        )
        ratios["transfers_atomic_vs_best_effort"] = round(
            statistics.median(throughput["atomic"]) / statistics.median(throughput["best_effort"]),
            3,
        )
        met = {
            "atomic_vs_best_effort": all(
                ratios[f"atomic_vs_best_effort_{w}"] <= TARGETS["atomic_vs_best_effort"]
                for w in WIDTHS
            ),
            "single_shard_vs_plain": ratios["single_shard_vs_plain"]
            <= TARGETS["single_shard_vs_plain"],
        }
        shard_map.dispose()
        one.dispose()
    finally:
        drop_databases(admin, names)
        admin.dispose()
    print(
        json.dumps(
            {
                "benchmark": "commit_across_shards",
                "transactions": args.transactions,
                "repeats": args.repeats,
                "threads": args.threads,
                "seconds": args.seconds,
                "commit_ms": commit_ms,
                "transfers_per_s": per_s,
                "ratios": ratios,
                "spread": spread,
                "target": {"limits": TARGETS, "met": met},
                "machine": {
                    **machine(),
                    "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
                    "postgresql": server,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
