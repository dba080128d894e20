"""Model declarations (ShardKey / FollowParent) and their resolution by RuleBook. No database.

Every test declares its own ``DeclarativeBase`` subclass, so the mappers of one test never
meet those of another.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

from shardalchemy import (
    FollowParent,
    Function,
    Hash,
    Lookup,
    MissingShardKeyError,
    ModelConfigurationError,
    ShardingError,
    ShardKey,
    ShardKeyError,
    ShardMapError,
    UnknownShardError,
    UnknownShardKeyError,
    shard_table,
)
from shardalchemy.sharding.declarations import declaration_for
from shardalchemy.sharding.rules import FollowRule, KeyRule, RuleBook
from shardalchemy.sharding.scoped_names import ShardScopedName

SHARDS = ("asia", "europe")
CONTINENTS = {"Asia": "asia", "Europe": "europe"}


# -- declarations ---------------------------------------------------------------------------


def test_shard_key_turns_dicts_and_callables_into_strategies() -> None:
    lookup_key = ShardKey("continent", CONTINENTS)
    assert lookup_key.attribute == "continent"
    assert isinstance(lookup_key.strategy, Lookup)
    assert lookup_key.strategy.shard_for("Asia") == "asia"
    function_key = ShardKey("tenant", lambda tenant: "asia")
    assert isinstance(function_key.strategy, Function)
    hasher = Hash()
    assert ShardKey("tenant", hasher).strategy is hasher


def test_shard_key_is_frozen() -> None:
    key = ShardKey("tenant", Hash())
    with pytest.raises(AttributeError):
        key.attribute = "other"  # type: ignore[misc]


@pytest.mark.parametrize("attribute", ["", None, 3])
def test_shard_key_needs_an_attribute_name(attribute: Any) -> None:
    with pytest.raises(ModelConfigurationError, match="ShardKey needs an attribute name"):
        ShardKey(attribute, Hash())


def test_shard_key_rejects_a_non_strategy() -> None:
    with pytest.raises(ShardMapError, match="must be a Strategy, a dict or a callable"):
        ShardKey("tenant", 42)  # type: ignore[arg-type]


def test_follow_parent_names_a_relationship() -> None:
    assert FollowParent("location").relationship == "location"
    assert FollowParent("location") == FollowParent("location")
    assert FollowParent("location") != FollowParent("owner")


def test_errors_share_one_root() -> None:
    for error in (ModelConfigurationError, UnknownShardError, MissingShardKeyError):
        assert issubclass(error, ShardingError)
    assert issubclass(UnknownShardKeyError, ShardKeyError)
    assert issubclass(UnknownShardError, KeyError)


# -- resolution -----------------------------------------------------------------------------


def test_rulebook_resolves_a_shard_key_and_a_follower() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str] = mapped_column(String(20))
        reports: Mapped[list[Report]] = relationship(back_populates="city")

    class Report(Base):
        __tablename__ = "reports"
        __sharding__ = FollowParent("city")
        id: Mapped[int] = mapped_column(primary_key=True)
        city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
        city: Mapped[City] = relationship(back_populates="reports")
        notes: Mapped[list[Note]] = relationship()

    class Note(Base):
        __tablename__ = "notes"
        __sharding__ = FollowParent("report")
        id: Mapped[int] = mapped_column(primary_key=True)
        report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"))
        report: Mapped[Report] = relationship(back_populates="notes")

    class Setting(Base):
        __tablename__ = "settings"
        id: Mapped[int] = mapped_column(primary_key=True)

    rules = RuleBook(SHARDS)
    city_rule = rules.for_mapper(City.__mapper__)
    assert isinstance(city_rule, KeyRule)
    assert (city_rule.name, city_rule.attribute) == ("City", "continent")
    assert city_rule.column is City.__table__.c.continent
    assert city_rule.table is City.__table__
    assert city_rule.shard_for_value("Europe") == "europe"

    note_rule = rules.for_mapper(Note.__mapper__)
    assert isinstance(note_rule, FollowRule)
    assert note_rule.name == "Note"
    assert note_rule.relationship.key == "report"
    assert isinstance(note_rule.parent, FollowRule)
    assert note_rule.parent.name == "Report"
    assert note_rule.root.name == "City"

    assert rules.for_mapper(Setting.__mapper__) is None
    # resolved once, then cached, and also known by table afterwards
    assert rules.for_mapper(City.__mapper__) is city_rule
    assert rules.for_table(City.__table__) is city_rule


def test_rulebook_binds_an_unbound_hash_to_the_shard_map() -> None:
    class Base(DeclarativeBase):
        pass

    class Event(Base):
        __tablename__ = "events"
        __sharding__ = ShardKey("tenant", Hash(buckets=8))
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]

    rule = RuleBook(("a", "b", "c")).for_mapper(Event.__mapper__)
    assert isinstance(rule, KeyRule)
    assert rule.strategy.shard_names() == frozenset({"a", "b", "c"})
    assert rule.shard_for_value(5) in {"a", "b", "c"}
    # each shard map binds for itself
    other = RuleBook(("x",)).for_mapper(Event.__mapper__)
    assert isinstance(other, KeyRule)
    assert other.shard_for_value(5) == "x"


def test_shard_key_may_use_an_attribute_whose_column_is_named_differently() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str] = mapped_column("continent_code", String(20))

    rule = RuleBook(SHARDS).for_mapper(City.__mapper__)
    assert isinstance(rule, KeyRule)
    assert rule.column.name == "continent_code"
    assert rule.attribute == "continent"


def test_shard_key_attribute_that_does_not_exist() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continnent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    with pytest.raises(ModelConfigurationError) as caught:
        RuleBook(SHARDS).for_mapper(City.__mapper__)
    message = str(caught.value)
    assert message.startswith("City.__sharding__ names shard key 'continnent'")


def test_shard_key_attribute_that_is_a_relationship() -> None:
    class Base(DeclarativeBase):
        pass

    class Country(Base):
        __tablename__ = "countries"
        id: Mapped[int] = mapped_column(primary_key=True)

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("country", Hash())
        id: Mapped[int] = mapped_column(primary_key=True)
        country_id: Mapped[int] = mapped_column(ForeignKey("countries.id"))
        country: Mapped[Country] = relationship()

    with pytest.raises(
        ModelConfigurationError, match=r"^City\.__sharding__ names shard key 'country'"
    ):
        RuleBook(SHARDS).for_mapper(City.__mapper__)


def test_shard_key_attribute_that_is_an_expression() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("label", Hash())
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(20))
        label: Mapped[str] = column_property(func.upper(name))

    with pytest.raises(
        ModelConfigurationError, match=r"City\.__sharding__ names shard key 'label'"
    ):
        RuleBook(SHARDS).for_mapper(City.__mapper__)


def test_sharding_as_a_list_of_two_shard_keys() -> None:
    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = "orders"
        __sharding__: ClassVar[Any] = [ShardKey("tenant", Hash()), ShardKey("region", CONTINENTS)]
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]
        region: Mapped[str]

    with pytest.raises(ModelConfigurationError) as caught:
        RuleBook(SHARDS).for_mapper(Order.__mapper__)
    assert "Order.__sharding__ declares 2 shard keys" in str(caught.value)
    assert "exactly one ShardKey or one FollowParent" in str(caught.value)


def test_sharding_that_is_not_a_declaration() -> None:
    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = "orders"
        __sharding__ = "tenant"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]

    with pytest.raises(
        ModelConfigurationError, match=r"Order\.__sharding__ must be a ShardKey or FollowParent"
    ):
        RuleBook(SHARDS).for_mapper(Order.__mapper__)


def test_single_table_subclass_declaring_another_shard_key() -> None:
    class Base(DeclarativeBase):
        pass

    class Animal(Base):
        __tablename__ = "animals"
        __sharding__ = ShardKey("owner", Hash())
        id: Mapped[int] = mapped_column(primary_key=True)
        owner: Mapped[int]
        kind: Mapped[str]
        __mapper_args__: ClassVar[dict[str, Any]] = {
            "polymorphic_on": "kind",
            "polymorphic_identity": "animal",
        }

    class Dog(Animal):
        __sharding__ = ShardKey("kind", Hash())
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "dog"}

    class Cat(Animal):
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "cat"}

    rules = RuleBook(SHARDS)
    with pytest.raises(ModelConfigurationError) as caught:
        rules.for_mapper(Dog.__mapper__)
    message = str(caught.value)
    assert message.startswith("Dog declares ShardKey(attribute='kind'")
    assert "its base Animal declares ShardKey(attribute='owner'" in message
    assert "a table has one shard key" in message
    # a subclass that declares nothing inherits its base's shard key
    cat_rule = rules.for_mapper(Cat.__mapper__)
    assert isinstance(cat_rule, KeyRule)
    assert cat_rule.attribute == "owner"
    assert declaration_for(Cat.__mapper__) is Animal.__dict__["__sharding__"]


def test_rule_of_a_single_table_hierarchy_is_named_after_its_base() -> None:
    class Base(DeclarativeBase):
        pass

    class Animal(Base):
        __tablename__ = "animals"
        __sharding__ = ShardKey("owner", Hash())
        id: Mapped[int] = mapped_column(primary_key=True)
        owner: Mapped[int]
        kind: Mapped[str]
        __mapper_args__: ClassVar[dict[str, Any]] = {
            "polymorphic_on": "kind",
            "polymorphic_identity": "animal",
        }

    class Cat(Animal):
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "cat"}

    rule = RuleBook(SHARDS).for_table(Animal.__table__)
    assert isinstance(rule, KeyRule)
    assert rule.name == "Animal"


def test_joined_table_subclass_may_declare_its_own_shard_key() -> None:
    class Base(DeclarativeBase):
        pass

    class Animal(Base):
        __tablename__ = "animals"
        __sharding__ = ShardKey("owner", Hash())
        id: Mapped[int] = mapped_column(primary_key=True)
        owner: Mapped[int]
        kind: Mapped[str]
        __mapper_args__: ClassVar[dict[str, Any]] = {
            "polymorphic_on": "kind",
            "polymorphic_identity": "animal",
        }

    class Dog(Animal):
        __tablename__ = "dogs"
        __sharding__ = ShardKey("kennel", Hash())
        id: Mapped[int] = mapped_column(ForeignKey("animals.id"), primary_key=True)
        kennel: Mapped[int]
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "dog"}

    rule = RuleBook(SHARDS).for_mapper(Dog.__mapper__)
    assert isinstance(rule, KeyRule)
    assert rule.attribute == "kennel"


def test_model_may_override_the_shard_key_of_a_mixin() -> None:
    class Base(DeclarativeBase):
        pass

    class TenantSharded:
        __sharding__ = ShardKey("tenant", Hash())

    class Invoice(TenantSharded, Base):
        __tablename__ = "invoices"
        __sharding__ = ShardKey("region", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]
        region: Mapped[str]

    rule = RuleBook(SHARDS).for_mapper(Invoice.__mapper__)
    assert isinstance(rule, KeyRule)
    assert rule.attribute == "region"


def test_follow_parent_naming_a_missing_relationship() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    class Report(Base):
        __tablename__ = "reports"
        __sharding__ = FollowParent("location")
        id: Mapped[int] = mapped_column(primary_key=True)
        city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
        city: Mapped[City] = relationship()

    with pytest.raises(ModelConfigurationError) as caught:
        RuleBook(SHARDS).for_mapper(Report.__mapper__)
    message = str(caught.value)
    assert "Report follows 'location'" in message
    assert "Report has no relationship of that name" in message
    assert "['city']" in message  # the relationships it does have


def test_follow_parent_over_a_one_to_many_relationship() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = FollowParent("reports")
        id: Mapped[int] = mapped_column(primary_key=True)
        reports: Mapped[list[Report]] = relationship(back_populates="city")

    class Report(Base):
        __tablename__ = "reports"
        __sharding__ = ShardKey("region", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        region: Mapped[str]
        city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
        city: Mapped[City] = relationship(back_populates="reports")

    with pytest.raises(ModelConfigurationError) as caught:
        RuleBook(SHARDS).for_mapper(City.__mapper__)
    message = str(caught.value)
    assert message.startswith("City.reports must be a many-to-one relationship")
    assert "the parent that City follows" in message
    assert message.endswith("not one-to-many")


def test_follow_parent_over_a_many_to_many_relationship() -> None:
    class Base(DeclarativeBase):
        pass

    links = Table(
        "links",
        Base.metadata,
        Column("tag_id", ForeignKey("tags.id"), primary_key=True),
        Column("city_id", ForeignKey("cities.id"), primary_key=True),
    )

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    class Tag(Base):
        __tablename__ = "tags"
        __sharding__ = FollowParent("cities")
        id: Mapped[int] = mapped_column(primary_key=True)
        cities: Mapped[list[City]] = relationship(secondary=links)

    with pytest.raises(ModelConfigurationError) as caught:
        RuleBook(SHARDS).for_mapper(Tag.__mapper__)
    message = str(caught.value)
    assert message.startswith("Tag.cities must be a many-to-one relationship")
    assert message.endswith("not many-to-many")


def test_follow_parent_whose_parent_is_not_sharded() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Report(Base):
        __tablename__ = "reports"
        __sharding__ = FollowParent("city")
        id: Mapped[int] = mapped_column(primary_key=True)
        city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
        city: Mapped[City] = relationship()

    with pytest.raises(ModelConfigurationError) as caught:
        RuleBook(SHARDS).for_mapper(Report.__mapper__)
    message = str(caught.value)
    assert "Report follows 'city' to City, which is not sharded" in message
    assert "give City a __sharding__ = ShardKey(...)" in message


def test_follow_cycle_between_two_models() -> None:
    class Base(DeclarativeBase):
        pass

    class Left(Base):
        __tablename__ = "lefts"
        __sharding__ = FollowParent("right")
        id: Mapped[int] = mapped_column(primary_key=True)
        right_id: Mapped[int | None] = mapped_column(ForeignKey("rights.id"))
        right: Mapped[Right] = relationship(foreign_keys=[right_id])

    class Right(Base):
        __tablename__ = "rights"
        __sharding__ = FollowParent("left")
        id: Mapped[int] = mapped_column(primary_key=True)
        left_id: Mapped[int | None] = mapped_column(ForeignKey("lefts.id"))
        left: Mapped[Left] = relationship(foreign_keys=[left_id])

    with pytest.raises(ModelConfigurationError, match=r"Left follows itself through a cycle: "):
        RuleBook(SHARDS).for_mapper(Left.__mapper__)
    with pytest.raises(ModelConfigurationError, match=r"cycle: Right -> Left -> Right$"):
        RuleBook(SHARDS).for_mapper(Right.__mapper__)


def test_follow_cycle_of_a_model_following_itself() -> None:
    class Base(DeclarativeBase):
        pass

    class Node(Base):
        __tablename__ = "nodes"
        __sharding__ = FollowParent("up")
        id: Mapped[int] = mapped_column(primary_key=True)
        up_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"))
        up: Mapped[Node] = relationship(remote_side=[id])

    with pytest.raises(ModelConfigurationError, match=r"cycle: Node -> Node$"):
        RuleBook(SHARDS).for_mapper(Node.__mapper__)


def test_strategy_naming_an_unknown_shard() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", {"Asia": "asia", "Mars": "mars"})
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    with pytest.raises(UnknownShardError) as caught:
        RuleBook(SHARDS).for_mapper(City.__mapper__)
    error = caught.value
    assert error.shard == "mars"
    assert error.known == SHARDS
    assert str(error) == (
        "unknown shard 'mars' in the strategy of City.continent; "
        "the shard map defines 'asia', 'europe'"
    )


def test_hash_bucket_map_naming_an_unknown_shard() -> None:
    class Base(DeclarativeBase):
        pass

    class Event(Base):
        __tablename__ = "events"
        __sharding__ = ShardKey("tenant", Hash(buckets=2, bucket_map={0: "asia", 1: "moon"}))
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]

    with pytest.raises(UnknownShardError, match="unknown shard 'moon' in the strategy of Event"):
        RuleBook(SHARDS).for_mapper(Event.__mapper__)


def test_function_strategy_without_declared_shards_is_not_checked() -> None:
    class Base(DeclarativeBase):
        pass

    class Event(Base):
        __tablename__ = "events"
        __sharding__ = ShardKey("tenant", lambda tenant: "anywhere")
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]

    rule = RuleBook(SHARDS).for_mapper(Event.__mapper__)
    assert isinstance(rule, KeyRule)  # unknowable shards are checked when rows are placed


def test_check_resolves_every_sharded_model_and_table_of_a_metadata() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    class Report(Base):
        __tablename__ = "reports"
        __sharding__ = FollowParent("city")
        id: Mapped[int] = mapped_column(primary_key=True)
        city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
        city: Mapped[City] = relationship()

    class Setting(Base):
        __tablename__ = "settings"
        id: Mapped[int] = mapped_column(primary_key=True)

    shard_table(_events_table(Base.metadata), ShardKey("tenant_key", Hash()))
    rules = RuleBook(SHARDS).check(Base.metadata)
    assert {rule.name for rule in rules} == {"City", "Report", "events"}


def test_check_raises_the_configuration_error_before_first_use() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", {"Asia": "asia", "Moon": "moon"})
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    with pytest.raises(UnknownShardError, match=r"'moon' in the strategy of City\.continent"):
        RuleBook(SHARDS).check(Base.metadata)


def test_check_finds_a_conflicting_single_table_subclass() -> None:
    class Base(DeclarativeBase):
        pass

    class Animal(Base):
        __tablename__ = "animals"
        __sharding__ = ShardKey("owner", Hash())
        id: Mapped[int] = mapped_column(primary_key=True)
        owner: Mapped[int]
        kind: Mapped[str]
        __mapper_args__: ClassVar[dict[str, Any]] = {
            "polymorphic_on": "kind",
            "polymorphic_identity": "animal",
        }

    class Dog(Animal):
        __sharding__ = ShardKey("kind", Hash())
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "dog"}

    class Cat(Animal):
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "cat"}

    with pytest.raises(ModelConfigurationError, match="Dog declares"):
        RuleBook(SHARDS).check(Base.metadata)


# -- KeyRule.shard_for_value ----------------------------------------------------------------


def _city_rule() -> KeyRule:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    rule = RuleBook(SHARDS).for_mapper(City.__mapper__)
    assert isinstance(rule, KeyRule)
    return rule


def test_shard_for_value_of_none_is_a_missing_shard_key() -> None:
    with pytest.raises(MissingShardKeyError) as caught:
        _city_rule().shard_for_value(None)
    error = caught.value
    assert (error.model, error.attribute, error.value) == ("City", "continent", None)
    assert str(error).startswith("City.continent is None; a sharded row needs a shard key")
    assert "lookup (2 values)" in str(error)


def test_shard_for_value_that_maps_nowhere_is_an_unknown_shard_key() -> None:
    with pytest.raises(UnknownShardKeyError) as caught:
        _city_rule().shard_for_value("Atlantis")
    error = caught.value
    assert (error.model, error.attribute, error.value) == ("City", "continent", "Atlantis")
    assert "City.continent = 'Atlantis' maps to no shard" in str(error)
    assert "add it to the strategy or fix the value" in str(error)


def test_shard_for_value_of_a_falsy_but_mapped_value() -> None:
    rule = KeyRule("T", Table("t", MetaData()), Column("k", Integer), "k", Lookup({0: "zero"}))
    assert rule.shard_for_value(0) == "zero"


# -- shard-scoped table names ---------------------------------------------------------------


def test_tables_of_sharded_models_get_shard_scoped_names() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        __table_args__ = (UniqueConstraint("name", name="uq_city_name"),)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str] = mapped_column(index=True)
        name: Mapped[str]

    class Report(Base):
        __tablename__ = "reports"
        __sharding__ = FollowParent("city")
        id: Mapped[int] = mapped_column(primary_key=True)
        city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
        city: Mapped[City] = relationship()

    class Setting(Base):
        __tablename__ = "settings"
        id: Mapped[int] = mapped_column(primary_key=True)

    for table, plain_name in ((City.__table__, "cities"), (Report.__table__, "reports")):
        assert isinstance(table.name, ShardScopedName)
        assert table.name == plain_name
        assert str(table.name) == plain_name
        assert hash(table.name) == hash(plain_name)
        assert Base.metadata.tables[plain_name] is table
    index_names = {index.name for index in City.__table__.indexes}
    assert index_names == {"ix_cities_continent"}
    assert all(isinstance(index.name, ShardScopedName) for index in City.__table__.indexes)
    unique = next(c for c in City.__table__.constraints if isinstance(c, UniqueConstraint))
    assert isinstance(unique.name, ShardScopedName)
    assert unique.name == "uq_city_name"
    # unsharded tables keep plain names
    assert not isinstance(Setting.__table__.name, ShardScopedName)


def test_table_of_a_model_sharded_through_a_mixin_gets_a_shard_scoped_name() -> None:
    class Base(DeclarativeBase):
        pass

    class TenantSharded:
        __sharding__ = ShardKey("tenant", Hash())

    class Invoice(TenantSharded, Base):
        __tablename__ = "invoices"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]

    assert isinstance(RuleBook(SHARDS).for_mapper(Invoice.__mapper__), KeyRule)
    assert isinstance(Invoice.__table__.name, ShardScopedName)


def test_for_table_knows_the_table_of_a_model_sharded_through_a_mixin() -> None:
    class Base(DeclarativeBase):
        pass

    class TenantSharded:
        __sharding__ = ShardKey("tenant", Hash())

    class Invoice(TenantSharded, Base):
        __tablename__ = "invoices"
        id: Mapped[int] = mapped_column(primary_key=True)
        tenant: Mapped[int]

    rule = RuleBook(SHARDS).for_table(Invoice.__table__)
    assert isinstance(rule, KeyRule)
    assert rule.attribute == "tenant"


# -- Core tables ----------------------------------------------------------------------------


def _events_table(metadata: MetaData) -> Table:
    return Table(
        "events",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant", Integer, key="tenant_key"),
        Column("payload", String(50)),
        Index("ix_events_payload", "payload"),
    )


def test_shard_table_shards_a_core_table() -> None:
    key = ShardKey("tenant_key", Lookup({1: "asia", 2: "europe"}))
    table = _events_table(MetaData())
    assert shard_table(table, key) is table
    assert isinstance(table.name, ShardScopedName)
    assert table.name == "events"
    assert all(isinstance(index.name, ShardScopedName) for index in table.indexes)
    rule = RuleBook(SHARDS).for_table(table)
    assert isinstance(rule, KeyRule)
    assert rule.name == "events"
    assert rule.column is table.c.tenant_key
    assert rule.shard_for_value(2) == "europe"
    # declaring the same key again is harmless
    assert shard_table(table, key) is table


def test_unsharded_core_table_has_no_rule() -> None:
    table = _events_table(MetaData())
    assert RuleBook(SHARDS).for_table(table) is None
    assert not isinstance(table.name, ShardScopedName)


def test_shard_table_needs_a_column_key() -> None:
    table = _events_table(MetaData())
    # the column's key, not its name
    with pytest.raises(ModelConfigurationError) as caught:
        shard_table(table, ShardKey("tenant", Hash()))
    assert str(caught.value) == ("table 'events' has no column 'tenant' to use as its shard key")
    assert "shardalchemy.sharding" not in table.info


def test_shard_table_needs_a_shard_key_not_a_follower() -> None:
    table = _events_table(MetaData())
    with pytest.raises(ModelConfigurationError, match=r"shard_table\('events'\) needs a ShardKey"):
        shard_table(table, FollowParent("parent"))  # type: ignore[arg-type]


def test_shard_table_refuses_a_second_shard_key() -> None:
    table = shard_table(_events_table(MetaData()), ShardKey("tenant_key", Hash()))
    with pytest.raises(ModelConfigurationError) as caught:
        shard_table(table, ShardKey("payload", Hash()))
    message = str(caught.value)
    assert message.startswith(
        "table 'events' already has shard key ShardKey(attribute='tenant_key'"
    )
    assert "a table has one shard key" in message
    rule = RuleBook(SHARDS).for_table(table)
    assert isinstance(rule, KeyRule)
    assert rule.attribute == "tenant_key"


def test_core_table_strategy_naming_an_unknown_shard() -> None:
    table = shard_table(_events_table(MetaData()), ShardKey("tenant_key", {1: "pluto"}))
    with pytest.raises(UnknownShardError, match=r"in the strategy of events\.tenant_key"):
        RuleBook(SHARDS).for_table(table)


def test_for_table_of_something_unhashable_or_not_a_table() -> None:
    rules = RuleBook(SHARDS)
    assert rules.for_table(object()) is None
    assert rules.for_table([]) is None  # unhashable: not cached, not an error


def test_for_table_knows_the_table_of_a_sharded_model() -> None:
    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "cities"
        __sharding__ = ShardKey("continent", CONTINENTS)
        id: Mapped[int] = mapped_column(primary_key=True)
        continent: Mapped[str]

    rules = RuleBook(SHARDS)
    # asked by table first (the router does this), before anything resolved the mapper
    first = rules.for_table(City.__table__)
    assert isinstance(first, KeyRule)
    assert (first.name, first.attribute) == ("City", "continent")
    assert rules.for_mapper(City.__mapper__) is first
    assert rules.for_table(City.__table__) is first
