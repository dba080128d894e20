"""A two-table world for atomic-commit tests: accounts on shards, keyed by ``shard`` column.

Also a script: ``python atomic_commit_world.py URL_A URL_B TXID`` writes one row with id
``TXID`` to each shard (and moves 10 from account 1 of shard a to account 1 of shard b),
commits, and prints ``COMMITTED`` when the commit returned.  With
``SHARDALCHEMY_FAILPOINT=<step>`` it dies by SIGKILL at that step of the commit.
"""

from __future__ import annotations

import sys
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, update
from sqlalchemy.orm import DeclarativeBase, mapped_column

from shardalchemy import Function, ShardKey, ShardMap


class Base(DeclarativeBase):
    pass


def _by_shard(value: Any) -> str:
    return str(value)


class Account(Base):
    __tablename__ = "accounts"
    __sharding__ = ShardKey("shard", Function(_by_shard))
    shard = mapped_column(String(10), primary_key=True)
    id = mapped_column(Integer, primary_key=True)
    balance = mapped_column(Integer, nullable=False)


class Entry(Base):
    """One row per transaction and shard: all or nothing shows as both or neither."""

    __tablename__ = "entries"
    __sharding__ = ShardKey("shard", Function(_by_shard))
    shard = mapped_column(String(10), primary_key=True)
    id = mapped_column(Integer, primary_key=True)
    parent = mapped_column(Integer, ForeignKey("entries_parents.id", deferrable=True,
                                               initially="DEFERRED"), nullable=True)  # fmt: skip


class EntryParent(Base):
    __tablename__ = "entries_parents"
    __sharding__ = ShardKey("shard", Function(_by_shard))
    shard = mapped_column(String(10))
    id = mapped_column(Integer, primary_key=True)


def shard_map_of(urls: dict[str, Any]) -> ShardMap:
    return ShardMap.databases(urls)


def transfer(session: Any, source: str, target: str, account: int, amount: int) -> None:
    session.execute(
        update(Account)
        .where(Account.shard == source, Account.id == account)
        .values(balance=Account.balance - amount)
    )
    session.execute(
        update(Account)
        .where(Account.shard == target, Account.id == account)
        .values(balance=Account.balance + amount)
    )


def main(url_a: str, url_b: str, transaction: int) -> None:
    shard_map = shard_map_of({"a": url_a, "b": url_b})
    with shard_map.sessionmaker()() as session:
        session.add_all([Entry(shard="a", id=transaction), Entry(shard="b", id=transaction)])
        transfer(session, "a", "b", 1, 10)
        session.commit()
    print("COMMITTED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
