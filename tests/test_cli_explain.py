"""``shardalchemy explain``: the route of a statement over a models module, without running it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shardalchemy import cli

MODELS = """
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from shardalchemy import FollowParent, Lookup, ShardKey, ShardMap


class Base(DeclarativeBase):
    pass


class City(Base):
    __tablename__ = "explain_cities"
    __sharding__ = ShardKey("continent", Lookup({"Asia": "asia", "Europe": "europe"}))
    id: Mapped[int] = mapped_column(primary_key=True)
    continent: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(20))


class Visit(Base):
    __tablename__ = "explain_visits"
    __sharding__ = FollowParent("city")
    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("explain_cities.id"))
    city: Mapped[City] = relationship()


shard_map = ShardMap.tables("sqlite:///{db}", ["asia", "europe"])
"""


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "explain_models.py"
    path.write_text(textwrap.dedent(MODELS).replace("{db}", str(tmp_path / "never.db")))
    monkeypatch.setenv("COLUMNS", "200")
    return path


def test_explain_prints_the_route_and_the_reason_tree(models: Path, capsys) -> None:
    statement = (
        "select(City).where(or_(City.continent == 'Asia', "
        "and_(City.continent == 'Europe', City.name == bindparam('n'))))"
    )
    assert cli.main(["explain", str(models), statement, "--params", '{"n": "Paris"}']) == 0
    out = capsys.readouterr().out
    assert "shards: asia, europe" in out
    assert "OR: union" in out
    assert "City.continent = 'Asia'  -> asia" in out
    assert "explain_cities.name = :n is not on a shard key  -> all shards" in out
    # explain never connects: the SQLite file was not even created
    assert not (models.parent / "never.db").exists()


def test_explain_of_a_follower_join_pinned_by_the_parent_key(models: Path, capsys) -> None:
    statement = "select(Visit).join(Visit.city).where(City.continent == 'Europe')"
    assert cli.main(["explain", str(models), statement]) == 0
    out = capsys.readouterr().out
    assert "SELECT explain_visits, explain_cities" in out
    assert "shards: europe" in out


def test_explain_of_a_scatter_says_why(models: Path, capsys) -> None:
    assert cli.main(["explain", str(models), "select(City)"]) == 0
    out = capsys.readouterr().out
    assert "shards: asia, europe" in out
    assert "no WHERE clause; all shards" in out


def test_explain_with_a_bad_expression_is_a_clear_error(models: Path, capsys) -> None:
    assert cli.main(["explain", str(models), "select(Nowhere)"]) == 2
    assert "cannot evaluate" in capsys.readouterr().out


def test_explain_needs_exactly_one_shard_map(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "no_map.py"
    empty.write_text("x = 1\n")
    assert cli.main(["explain", str(empty), "select(x)"]) == 2
    assert "exactly one ShardMap" in capsys.readouterr().out
