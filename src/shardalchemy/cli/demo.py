"""The weather demo: SQLAlchemy's sharding example, declaratively, on any placement.

Four continent shards, seven cities with a weather report each, and every
check that SQLAlchemy's ``examples/sharding/separate_tables.py`` asserts.
Unlike that example there is no chooser function here: the models declare
their shard key (``continent``) or the parent they follow, and shardalchemy
derives the routing.

:func:`run` executes the scenario on a shard map and returns the steps with
what each statement touched and why; ``shardalchemy demo`` prints them.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    String,
    Table,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..inspection import StatementLog
from ..options import set_shard_id
from ..routing.route import Route
from ..sharding.declarations import FollowParent, ShardKey
from ..sharding.strategies import Lookup
from ..topology.shard_map import ShardMap

CONTINENT_SHARDS = {
    "North America": "north_america",
    "Asia": "asia",
    "Europe": "europe",
    "South America": "south_america",
}
SHARDS = list(CONTINENT_SHARDS.values())
CITIES = [
    ("Asia", "Tokyo"),
    ("North America", "New York"),
    ("North America", "Toronto"),
    ("Europe", "London"),
    ("Europe", "Dublin"),
    ("South America", "Brasilia"),
    ("South America", "Quito"),
]


class Base(DeclarativeBase):
    """The demo's own declarative base (its models never mix with yours)."""


# IDs unique across shards, as in SQLAlchemy's example: one counter row,
# advanced in its own short transaction before the session writes anything.
# (shardalchemy's ID generators replace this; see the README.)
ids = Table("ids", Base.metadata, Column("nextid", Integer, nullable=False))


class WeatherLocation(Base):
    """A city, stored on the shard of its continent."""

    __tablename__ = "weather_locations"
    __sharding__ = ShardKey("continent", Lookup(CONTINENT_SHARDS))

    id: Mapped[int] = mapped_column(primary_key=True)
    continent: Mapped[str] = mapped_column(String(50))
    city: Mapped[str] = mapped_column(String(50))
    reports: Mapped[list[Report]] = relationship(back_populates="location")

    def __repr__(self) -> str:
        return f"WeatherLocation({self.city!r}, {self.continent!r})"


class Report(Base):
    """A weather report, stored on its city's shard."""

    __tablename__ = "weather_reports"
    __sharding__ = FollowParent("location")

    id: Mapped[int] = mapped_column(primary_key=True)
    location_id: Mapped[int] = mapped_column(ForeignKey("weather_locations.id"))
    temperature: Mapped[float]
    report_time: Mapped[datetime.datetime] = mapped_column(default=datetime.datetime.now)
    location: Mapped[WeatherLocation] = relationship(back_populates="reports")


@dataclasses.dataclass
class Check:
    """One assertion of the scenario and whether it held."""

    description: str
    passed: bool
    detail: str = ""


@dataclasses.dataclass
class Touch:
    """A statement the step ran: which shards it reached, and why."""

    statement: str
    shards: list[str]
    reason: str


@dataclasses.dataclass
class Step:
    """One step of the scenario."""

    title: str
    touches: list[Touch] = dataclasses.field(default_factory=list)
    sql_counts: dict[str | None, int] = dataclasses.field(default_factory=dict)
    explanations: list[Route] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)

    def check(self, description: str, passed: bool, detail: Any = "") -> None:
        self.checks.append(Check(description, bool(passed), str(detail)))


def _allocate_ids(shard_map: ShardMap, count: int) -> list[int]:
    """Advance the counter by ``count`` in one short transaction on the first shard."""
    with shard_map.bind(shard_map.shard_names[0]).begin() as connection:
        start = connection.scalar(select(ids.c.nextid).with_for_update())
        if start is None:
            connection.execute(ids.insert(), {"nextid": 1 + count})
            start = 1
        else:
            connection.execute(update(ids).values(nextid=ids.c.nextid + count))
    return list(range(start, start + count))


def _touches(routes: list[Route]) -> list[Touch]:
    """One row per distinct (statement, shards, reason), counting repeats."""
    counts: dict[tuple[str, tuple[str, ...], str], int] = {}
    for route in routes:
        key = (route.statement, route.shards, route.reason)
        counts[key] = counts.get(key, 0) + 1
    return [
        Touch(statement if count == 1 else f"{statement} (x{count})", list(shards), reason)
        for (statement, shards, reason), count in counts.items()
    ]


def run(shard_map: ShardMap, *, on_step: Callable[[Step], None] | None = None) -> list[Step]:
    """Run the weather scenario on ``shard_map`` (which must have the four continent shards).

    The demo's tables are dropped and recreated first.  Returns every step with
    its checks; a failed check does not stop the scenario.
    """
    steps: list[Step] = []

    def finish(step: Step) -> None:
        steps.append(step)
        if on_step is not None:
            on_step(step)

    step = Step("Create the tables on every shard")
    shard_map.drop_all(Base.metadata)
    shard_map.create_all(Base.metadata)
    for shard in shard_map.shard_names:
        names = [
            shard_map.table_name(t, shard) for t in (WeatherLocation.__table__, Report.__table__)
        ]
        step.touches.append(
            Touch("CREATE TABLE", [shard], f"{shard_map.location(shard)}: {', '.join(names)}")
        )
    shard_map.create_all(Base.metadata)  # idempotent: a second call changes nothing
    step.check("create_all is idempotent (second call succeeded)", True)
    finish(step)

    Session = shard_map.sessionmaker()
    with Session() as session, StatementLog(shard_map) as log:
        step = Step("Save 7 cities, each with a report")
        cities = {}
        for (continent, city), new_id in zip(
            CITIES, _allocate_ids(shard_map, len(CITIES)), strict=True
        ):
            location = WeatherLocation(id=new_id, continent=continent, city=city)
            location.reports.append(Report(temperature=80.0))
            cities[city] = location
        log.clear()
        with session.recording_routes() as routes:
            session.add_all(cities.values())
            session.commit()
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        step.check(
            "every row went to its continent's shard",
            all(
                inspect(c).identity_token == CONTINENT_SHARDS[c.continent] for c in cities.values()
            ),
        )
        finish(step)

        step = Step("In a new session: get Tokyo by primary key, then its reports")
        log.clear()
        with Session() as fresh, fresh.recording_routes() as routes:
            tokyo = fresh.get(WeatherLocation, cities["Tokyo"].id)
            temperature = tokyo.reports[0].temperature if tokyo and tokyo.reports else None
            found_on = inspect(tokyo).identity_token if tokyo is not None else None
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        step.check("get() found Tokyo on asia", found_on == "asia", found_on)
        step.check("Tokyo's report has temperature 80.0", temperature == 80.0, temperature)
        report_shards = [e.shard for e in log.entries if "weather_reports" in e.sql]
        step.check(
            "the reports' lazy load stayed on asia", report_shards == ["asia"], report_shards
        )
        finish(step)

        step = Step('Query with set_shard_id("north_america")')
        log.clear()
        with session.recording_routes() as routes:
            pinned = select(WeatherLocation).options(set_shard_id("north_america"))
            step.explanations.append(session.explain(pinned))
            found = session.scalars(pinned)
            north_american = {c.city for c in found}
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        step.check(
            "only the North American cities",
            north_american == {"New York", "Toronto"},
            sorted(north_american),
        )
        finish(step)

        step = Step("Query continent IN ('Europe', 'Asia')")
        log.clear()
        with session.recording_routes() as routes:
            by_continent = select(WeatherLocation).where(
                WeatherLocation.continent.in_(["Europe", "Asia"])
            )
            step.explanations.append(session.explain(by_continent))
            found = session.scalars(by_continent)
            asian_and_european = {c.city for c in found}
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        step.check(
            "London, Dublin and Tokyo",
            asian_and_european == {"London", "Dublin", "Tokyo"},
            sorted(asian_and_european),
        )
        step.check(
            "only the asia and europe shards were queried",
            set(log.shards()) == {"asia", "europe"},
            log.shards(),
        )
        finish(step)

        step = Step("Reports JOIN their cities WHERE continent = 'Asia' OR city = 'Dublin'")
        log.clear()
        with session.recording_routes() as routes:
            joined = (
                select(Report)
                .join(Report.location)
                .where(or_(WeatherLocation.continent == "Asia", WeatherLocation.city == "Dublin"))
            )
            step.explanations.append(session.explain(joined))
            everywhere = {report.location.city for report in session.scalars(joined)}
            asian = select(Report).join(Report.location).where(WeatherLocation.continent == "Asia")
            step.explanations.append(session.explain(asian))
            in_asia = {report.location.city for report in session.scalars(asian)}
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        step.check(
            "OR with a non-key predicate: every shard, Tokyo and Dublin",
            everywhere == {"Tokyo", "Dublin"},
            sorted(everywhere),
        )
        step.check(
            "the parent's shard key pins the join to asia",
            in_asia == {"Tokyo"} and routes[-1].shards == ("asia",),
            routes[-1].shards,
        )
        finish(step)

        step = Step("Same primary key on two shards: two identities")
        log.clear()
        with session.recording_routes() as routes:
            newyork_report = cities["New York"].reports[0]
            tokyo_report = cities["Tokyo"].reports[0]
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        step.check(
            "New York's report is (Report, (1,), 'north_america')",
            inspect(newyork_report).identity_key == (Report, (1,), "north_america"),
            inspect(newyork_report).identity_key,
        )
        step.check(
            "Tokyo's report is (Report, (1,), 'asia')",
            inspect(tokyo_report).identity_key == (Report, (1,), "asia"),
            inspect(tokyo_report).identity_key,
        )
        step.check(
            "identity_token of New York's report",
            inspect(newyork_report).identity_token == "north_america",
        )
        step.check(
            "identity_token of Tokyo's report", inspect(tokyo_report).identity_token == "asia"
        )
        finish(step)

        step = Step("Bulk-insert 28 reports in one statement, routed row by row")
        rows = [
            {"location_id": city.id, "temperature": 60.0 + hour}
            for hour in range(4)
            for city in cities.values()
        ]
        log.clear()
        with session.recording_routes() as routes:
            session.execute(insert(Report), rows)
            session.commit()
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        per_shard = {
            shard: session.scalar(
                select(func.count()).select_from(Report).options(set_shard_id(shard))
            )
            for shard in shard_map.shard_names
        }
        expected = {shard: 0 for shard in shard_map.shard_names}
        for city in cities.values():
            expected[CONTINENT_SHARDS[city.continent]] += 5  # its first report and 4 new ones
        step.check("every report went to its city's shard", per_shard == expected, per_shard)
        inserts = [entry.shard for entry in log.entries if entry.sql.startswith("INSERT")]
        step.check(
            "one INSERT (executemany) per shard",
            sorted(inserts) == sorted(shard_map.shard_names),
            inserts,
        )
        finish(step)

        step = Step("Across every shard: ORDER BY ... LIMIT and aggregates, merged")
        log.clear()
        with session.recording_routes() as routes:
            hottest = (
                select(Report).order_by(Report.temperature.desc(), Report.location_id).limit(3)
            )
            totals = select(
                func.count(),
                func.avg(Report.temperature),
                func.min(Report.temperature),
                func.max(Report.temperature),
            ).select_from(Report)
            step.explanations += [session.explain(hottest), session.explain(totals)]
            top = [(r.location_id, r.temperature) for r in session.scalars(hottest)]
            count, average, low, high = session.execute(totals).one()
        step.touches = _touches(routes)
        step.sql_counts = dict(log.counts())
        first_ids = sorted(city.id for city in cities.values())[:3]
        step.check(
            "the 3 hottest reports of all shards (80.0, ties by city id)",
            top == [(location, 80.0) for location in first_ids],
            top,
        )
        reports = [80.0] * len(cities) + [60.0 + hour for hour in range(4)] * len(cities)
        step.check(
            f"count(*) = {len(reports)} over all shards, not one row per shard",
            count == len(reports),
            count,
        )
        step.check(
            "avg, min and max as one database holding every report would give them",
            abs(float(average) - sum(reports) / len(reports)) < 1e-9
            and (low, high) == (min(reports), max(reports)),
            (average, low, high),
        )
        limited = [entry.shard for entry in log.entries if "LIMIT" in entry.sql.upper()]
        step.check(
            "every shard was asked for its first 3 rows only",
            sorted(limited) == sorted(shard_map.shard_names),
            limited,
        )
        finish(step)
    return steps
