"""``shardalchemy explain``: the route of a statement over a models module, without running it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

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


def explain_json(models: Path, capsys: pytest.CaptureFixture[str], *arguments: str) -> Any:
    assert cli.main(["explain", "--json", str(models), *arguments]) == 0
    return json.loads(capsys.readouterr().out)  # one JSON document, nothing else


def test_explain_json_prints_the_route_its_reason_tree_and_the_plan_tree(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = (
        "select(City).where(or_(City.continent == 'Asia', City.name == 'Paris'))"
        ".order_by(City.name).limit(2).offset(1)"
    )
    document = explain_json(models, capsys, statement)
    assert sorted(document) == sorted(
        ["statement", "sql", "shards", "reason", "explanation", "plan", "refusal"]
    )
    assert document["statement"] == "SELECT explain_cities"
    assert document["sql"].startswith("SELECT explain_cities.id, explain_cities.continent")
    assert document["sql"].endswith("ORDER BY explain_cities.name LIMIT :param_1 OFFSET :param_2")
    assert document["shards"] == ["asia", "europe"]
    assert document["reason"] == (
        "City.continent = 'Asia' -> asia; explain_cities.name = :name_1 is not on a shard key; "
        "all shards"
    )
    assert document["refusal"] is None
    reasons = document["explanation"]
    assert reasons["text"] == "OR: union" and reasons["shards"] is None
    branches = {child["text"]: child for child in reasons["children"]}
    assert branches["City.continent = 'Asia'"] == {
        "text": "City.continent = 'Asia'",
        "shards": ["asia"],
        "children": [],
    }
    assert branches["explain_cities.name = :name_1 is not on a shard key"]["shards"] is None
    # the plan: Limit over MergeSort over the route each shard runs
    limit = document["plan"]
    assert (limit["operator"], limit["limit"], limit["offset"]) == ("Limit", 2, 1)
    (merge,) = limit["children"]
    assert merge["operator"] == "MergeSort"
    assert [key["label"] for key in merge["keys"]] == ["explain_cities.name"]
    assert merge["keys"][0]["descending"] is False
    (route,) = merge["children"]
    assert route["operator"] == "Route" and route["children"] == []
    assert route["shards"] == ["asia", "europe"]
    assert route["sql"].endswith("ORDER BY explain_cities.name LIMIT 3")


def test_explain_json_of_an_aggregate_names_each_partial(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = (
        "select(City.continent, func.avg(City.id)).group_by(City.continent)"
        ".having(func.count() > 1)"
    )
    plan = explain_json(models, capsys, statement)["plan"]
    having, aggregate, concatenate, route = (
        plan,
        plan["children"][0],
        plan["children"][0]["children"][0],
        plan["children"][0]["children"][0]["children"][0],
    )
    assert having["operator"] == "Filter" and having["predicate"] == "HAVING count(*) > 1"
    assert aggregate["operator"] == "Aggregate" and aggregate["scalar"] is False
    kinds = {slot["label"]: slot["kind"] for slot in aggregate["aggregates"]}
    assert kinds == {"avg(explain_cities.id)": "avg", "count(*)": "count"}
    assert [key["label"] for key in aggregate["group_by"]] == ["explain_cities.continent"]
    assert concatenate["operator"] == "Concatenate"
    assert "HAVING" not in route["sql"] and "_shardalchemy_sum" in route["sql"]


def test_explain_json_of_a_refused_statement_gives_the_construct(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = "select(City.id, func.row_number().over(order_by=City.id))"
    document = explain_json(models, capsys, statement)
    assert document["plan"] is None
    refusal = document["refusal"]
    assert refusal["construct"].startswith("window function")
    assert "cannot be answered exactly across shards" in refusal["message"]


def test_explain_json_of_a_single_shard_statement_has_no_plan(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = explain_json(models, capsys, "select(City).where(City.continent == 'Europe')")
    assert document["shards"] == ["europe"]
    assert document["plan"] is None and document["refusal"] is None
    assert document["explanation"]["shards"] == ["europe"]


def test_explain_json_reports_an_error_as_json(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["explain", "--json", str(models), "select(Nowhere)"]) == 2
    assert "cannot evaluate" in json.loads(capsys.readouterr().out)["error"]
