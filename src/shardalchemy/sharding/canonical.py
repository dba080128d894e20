"""Canonical forms: the value the database stores (or compares), not the Python object passed.

A shard key is hashed or looked up by its *canonical form*: the value its column
holds once the database has stored it, expressed as one Python value.  Two
representations the database stores or compares as equal have one canonical
form, so they route to one shard: ``"7"`` and ``7`` for an ``Integer``,
``Decimal("1.005")`` and ``Decimal("1.01")`` for a ``Numeric(10, 2)`` on
PostgreSQL.  A representation whose stored value cannot be known is refused
with a :class:`~shardalchemy.ShardKeyError` naming the model, attribute, value
and column type; the router treats a refused value as "prunes nothing" (all
shards: too many shards, never too few).

:func:`canonical_form` builds, once per shard-key column and dialect, two
functions (no per-call type dispatch):

- ``stored(value)``: the value a row written with ``value`` holds (INSERT,
  UPDATE ... SET, flush placement, bulk rows);
- ``compared(value)``: the canonical form of every stored value that
  ``column = value`` matches (WHERE, ``IN``, ``get()``, UPDATE by primary key).
  It refuses more than ``stored``: where SQL compares the value in another type
  (MariaDB compares a string column with an integer as numbers: ``'07' = 7``).

Example:

>>> from sqlalchemy import Integer, Numeric, String
>>> from decimal import Decimal
>>> canonical_form(Integer(), "postgresql", model="Event", attribute="tenant").stored("7")
7
>>> canonical_form(Numeric(10, 2), "mariadb", model="Price", attribute="amount").stored(
...     Decimal("1.005")
... )
Decimal('1.01')
>>> canonical_form(String(20), "mariadb", model="User", attribute="name").stored("Alice ")
'alice'
>>> canonical_form(Integer(), "sqlite", model="Event", attribute="tenant").stored("7.5")
Traceback (most recent call last):
...
shardalchemy.errors.ShardKeyError: Event.tenant = '7.5' cannot be routed: not an integer ...

The canonical forms, each checked against the real servers (PostgreSQL 15 via
psycopg 3, MariaDB 10.11 via PyMySQL, SQLite 3 via the standard library:
inserting each representation and reading back what was stored, and comparing
``column = representation``; ``tests/test_canonical_keys.py`` repeats this with
hypothesis):

=============  ===================================================================================
column type    accepted -> canonical form (per dialect where they differ)
=============  ===================================================================================
Integer,       ``int``; ``bool``; integral ``float`` or ``Decimal``; a ``str`` ``[+-]digits``
SmallInteger,  (ASCII), possibly between spaces, tabs, CR and LF (all three backends skip them)
BigInteger     -> that ``int``; other strings refused (MariaDB compares ``'7abc' = 7``).
               Refused: non-integral values (PostgreSQL and MariaDB round 7.5 to 8, SQLite stores
               REAL 7.5), values outside the column's range (by type and ``unsigned`` on PostgreSQL
               and MariaDB; 64-bit on SQLite).
String, Text,  ``str``; an ``int`` is stored as its decimal text (not compared on MariaDB, which
Unicode,       compares a string column with a number numerically).  SQLite: exact (``NOCASE``:
CHAR, ...      ASCII letters lower-cased; ``RTRIM``: trailing spaces dropped).  PostgreSQL: exact
               under a deterministic collation; ``CHAR(n)`` and spaces beyond ``VARCHAR(n)``
               dropped (the server truncates them; other excess refused); ``CITEXT``: printable
               ASCII lower-cased, other strings refused.  MariaDB: ``utf8mb4_bin`` (PAD SPACE):
               trailing spaces dropped; ``utf8mb4_nopad_bin``: exact; any other collation (the
               default ``utf8mb4_general_ci`` too): printable ASCII lower-cased and right-trimmed,
               other strings refused (see Collations).
Numeric(p, s)  ``Decimal``; ``int``; a ``float`` whose repr has at most 15 digits; a decimal str.
               PostgreSQL, MariaDB: rounded half away from zero to scale ``s`` (``Decimal("1.005")``
               -> 1.01), too many integer digits refused; MariaDB's bare ``NUMERIC`` is
               ``DECIMAL(10, 0)``.  SQLite: SQLAlchemy binds ``float(value)`` and SQLite stores that
               double (1.005 stays 1.005; what SQLAlchemy reads back, 1.00, is not what is stored):
               the double, as a ``Decimal``.  Compared floats and (MariaDB) strings are compared as
               doubles: refused for columns of more than 15 digits.
Float, Double  ``float``; ``int``; ``Decimal`` (on MariaDB only a double's shortest repr) -> the
               double, as the ``Decimal`` of its repr (shard keys hash exactly); single precision
               columns (MariaDB ``FLOAT``, PostgreSQL ``REAL``/``Float(24)``): rounded to float32.
               NaN and infinities refused.
Date           ``date``; a naive ``datetime`` -> its date (all three); ``'YYYY-MM-DD'`` (not stored
               on SQLite, whose SQLAlchemy Date refuses strings).  Aware datetimes refused
               (PostgreSQL takes the date in the session's time zone).
DateTime       a naive ``datetime``; a ``date`` -> its midnight.  PostgreSQL: ``TIMESTAMP(p)``
               rounds half away from zero (from 2000-01-01) to ``p`` digits (default 6);
               ``timezone=True``: aware values as UTC instants, naive ones and dates refused (the
               session's time zone).  MariaDB: ``DATETIME(fsp)`` truncates to ``fsp`` digits
               (default 0: microseconds dropped); a ``mysql://`` URL may reach MySQL, which rounds,
               so there a fraction beyond ``fsp`` is refused.  SQLite: what SQLAlchemy's SQLite
               DATETIME stores, read back (with ``timezone=True`` an aware value's offset is
               dropped, as SQLAlchemy does).  Elsewhere aware values for a column without a time
               zone are refused (the session's or the driver's time zone).
Time           a naive ``time``: PostgreSQL ``TIME(p)`` rounds, MariaDB truncates (``mysql://``:
               refused), SQLite stores SQLAlchemy's text.
Uuid           ``uuid.UUID``; a ``str`` of 32 hex digits, dashed or not -> the ``UUID``.  SQLite:
               SQLAlchemy's Uuid takes only ``UUID`` objects (``as_uuid=True``) or only strings
               (``as_uuid=False``) to store; the other is refused.
Enum           a member or its database string -> the database string (``Enum.enums``); anything
               else refused (MariaDB would store 'RED' as 'red').
Boolean        ``True``, ``False``, 0, 1 -> the ``bool``.
LargeBinary    ``bytes``, ``bytearray``, ``memoryview`` -> the ``bytes`` (MariaDB ``BINARY(n)``,
               which pads, is refused).
TypeDecorator  its impl's form of what its ``process_bind_param`` returns (what SQLAlchemy sends).
=============  ===================================================================================

Other column types (JSON, ARRAY, Interval, ...) have no canonical form: a shard key
of such a type is refused with :class:`~shardalchemy.ModelConfigurationError`.

Collations
----------
Under MariaDB's default ``utf8mb4_general_ci`` (and every ``_ci`` collation)
``'Alice'``, ``'alice'``, ``'Alice '`` and ``'Álice'`` are one value.  Rather than
an equality proved equal to each collation's (a Unicode weight table per
collation) or the server's ``WEIGHT_STRING`` (a round trip per value), string keys
under a collation that is not binary are routed by a form *proved coarser* than
the collation's equality: printable-ASCII strings are lower-cased and
right-trimmed, so any two the collation calls equal route to one shard (two it
calls different may share a shard, which costs balance, not answers).  Proved on
MariaDB 10.11 for each of its 690 collations (``tests/test_canonical_keys.py``):
every 1- and 2-character printable-ASCII string that ``GROUP BY`` puts with
another has the same form, except under the ``roman``, ``lithuanian``, ``big5``,
``gb2312``, ``gbk``, ``cp1251_ukrainian``, ``geostd8``, ``koi8u``, ``macce`` and
``swe7`` collations ('i' = 'j', 'y' = 'i', '[' stored as '?', ...), which are
refused, as are MySQL 8's ``_0900_`` collations (not checked on a MySQL
server).  A string with any other character (``'Álice'``) cannot be placed under
such a collation: it is refused with a message saying to declare the column with
a binary collation (``String(50, collation="utf8mb4_bin")``), under which every
string routes exactly.

A column without a declared collation takes the database's; ``create_all`` reads
the real collation of every string shard key on each server and refuses one
without a proved form (and, on PostgreSQL, a non-deterministic collation, under
which equal strings differ in bytes).  On PostgreSQL a declared collation must be
one known to be deterministic (``C``, ``POSIX``, ``default``, ``ucs_basic``, a
libc locale, a predefined ``-x-icu`` collation); SQLite knows ``BINARY``,
``NOCASE`` and ``RTRIM``.

Shard maps mixing backends
--------------------------
A rule cannot know the shard (and so the database) before it has the shard, so
a shard map whose shards run different backends uses the strictest common form:
a value is accepted only where every backend stores it alike, and refused
otherwise.  A rule built without a dialect uses the common form of SQLite and
PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import math
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.engine.default import DefaultDialect

from ..errors import ModelConfigurationError, ShardKeyError

Canonical = Callable[[Any], Any]
"""A function from a shard-key value to its canonical form; raises :class:`ShardKeyError`."""

CollationCheck = Callable[[str | None, bool | None], str | None]
"""(the column's collation on the server, whether it is deterministic) -> a problem, or None."""

GENERIC = ("sqlite", "postgresql")
"""The dialects whose common form a rule without a dialect uses."""

_DIALECTS = ("sqlite", "postgresql", "mariadb", "mysql")

_DRIVER_URLS = {
    "sqlite": "sqlite+pysqlite://",
    "postgresql": "postgresql+psycopg://",
    "mariadb": "mariadb+pymysql://",
    "mysql": "mysql+pymysql://",
}

_DIALECT_OBJECTS: dict[str, Dialect] = {}


def unknowable(value: Any) -> NoReturn:
    """The canonical form of a column whose type has none: every value is refused."""
    raise ShardKeyError(
        f"{value!r}: the column's type has no canonical form",
        model="?",
        attribute="?",
        value=value,
        reason="the column's type has no canonical form",
    )


def dialect_names(dialect: str | Iterable[str] | None) -> tuple[str, ...]:
    """The dialects a shard map's shards run, as this module knows them.

    >>> dialect_names("postgresql"), dialect_names(["sqlite", "sqlite"]), dialect_names(None)
    (('postgresql',), ('sqlite',), ('sqlite', 'postgresql'))
    """
    if dialect is None:
        return GENERIC
    names = (dialect,) if isinstance(dialect, str) else tuple(dialect)
    known: list[str] = []
    for name in names:
        for each in (name,) if name in _DIALECTS else GENERIC:
            if each not in known:
                known.append(each)
    return tuple(known) or GENERIC


def _dialect_object(name: str) -> Dialect:
    """A dialect instance for SQLAlchemy's own bind processing (no connection, no driver)."""
    found = _DIALECT_OBJECTS.get(name)
    if found is None:
        try:
            found = make_url(_DRIVER_URLS[name]).get_dialect()()
        except Exception:  # pragma: no cover - a dialect module that cannot load
            found = DefaultDialect()
        _DIALECT_OBJECTS[name] = found
    return found


@dataclasses.dataclass(frozen=True, eq=False)  # compared (and hashed) by identity
class CanonicalForm:
    """How one shard-key column's values become the value its database stores.

    ``stored`` and ``compared`` raise :class:`~shardalchemy.ShardKeyError` for a
    value whose stored form cannot be known.  ``orders`` says whether SQL orders
    canonical values as Python does (not strings: their order is the
    collation's), so a range of them may be pruned.  ``collation_checks`` maps a
    dialect to the check ``create_all`` runs against the column's real collation.
    """

    column_type: str
    dialect: str
    stored: Canonical
    compared: Canonical
    orders: bool = True
    kind: str = "value"
    type_name: str = "value"  # the column's Python type, for messages ("int")
    converts: bool = False  # a TypeDecorator: canonical values are its impl's, not the caller's
    collation_checks: Mapping[str, CollationCheck] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Key:
    """Who a canonical form belongs to, for the messages of its refusals."""

    model: str
    attribute: str
    shown_type: str
    dialect: str
    ddl: str = ""  # the column's type as its CREATE TABLE says it on this dialect ("CHAR(5)")

    def refuse(self, value: Any, why: str) -> NoReturn:
        raise ShardKeyError(
            f"{self.model}.{self.attribute} = {value!r} cannot be routed: {why} "
            f"(column type {self.shown_type} on {self.dialect}); pass the value as the "
            "database stores it",
            model=self.model,
            attribute=self.attribute,
            value=value,
            column_type=self.shown_type,
            reason=why,
        )


def canonical_form(
    column_type: sqltypes.TypeEngine[Any],
    dialect: str | Iterable[str] | None,
    *,
    model: str,
    attribute: str,
) -> CanonicalForm:
    """The canonical form of a shard-key column of ``column_type`` on ``dialect``.

    ``dialect`` is a dialect name (``"sqlite"``, ``"postgresql"``, ``"mariadb"``,
    ``"mysql"``), several (a shard map mixing backends: their strictest common
    form) or ``None`` (the common form of SQLite and PostgreSQL).  Raises
    :class:`~shardalchemy.ModelConfigurationError` for a column type or collation
    without a known canonical form.

    >>> import datetime
    >>> from sqlalchemy import Date
    >>> form = canonical_form(Date(), "sqlite", model="Sale", attribute="day")
    >>> form.stored(datetime.datetime(2024, 1, 2, 23, 59))
    datetime.date(2024, 1, 2)
    """
    names = dialect_names(dialect)
    forms = [_form_for(column_type, name, model, attribute) for name in names]
    if len(forms) == 1:
        return forms[0]
    return _common(forms, _Key(model, attribute, forms[0].column_type, "+".join(names)))


def _common(forms: Sequence[CanonicalForm], key: _Key) -> CanonicalForm:
    """The strictest common form: a value every dialect stores alike, else refused."""

    def agreed(pick: Callable[[CanonicalForm], Canonical]) -> Canonical:
        functions = [(form.dialect, pick(form)) for form in forms]

        def common(value: Any) -> Any:
            results = [(name, function(value)) for name, function in functions]
            first = results[0][1]
            for name, other in results[1:]:
                if other != first or type(other) is not type(first):
                    key.refuse(
                        value,
                        f"stored as {first!r} on {results[0][0]} but {other!r} on {name}; a "
                        "shard map mixing backends routes only values they store alike",
                    )
            return first

        return common

    checks: dict[str, CollationCheck] = {}
    for form in forms:
        checks.update(form.collation_checks)
    return CanonicalForm(
        column_type=forms[0].column_type,
        dialect=key.dialect,
        stored=agreed(lambda form: form.stored),
        compared=agreed(lambda form: form.compared),
        orders=all(form.orders for form in forms),
        kind=forms[0].kind,
        type_name=forms[0].type_name,
        converts=any(form.converts for form in forms),
        collation_checks=checks,
    )


def _shown(column_type: Any) -> str:
    try:
        text = repr(column_type)
    except Exception:  # pragma: no cover - a type whose repr fails
        text = type(column_type).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _ddl(column_type: Any, dialect_object: Dialect) -> str:
    """The column's type as CREATE TABLE renders it: what the server is told it stores.

    It resolves variants and keeps what the dialect's own type objects may drop (a CHAR
    becomes psycopg's string type; the DDL still says CHAR(5)).
    """
    try:
        return " ".join(str(column_type.compile(dialect=dialect_object)).upper().split())
    except Exception:  # a type this dialect cannot render: decided by its class alone
        return ""


def _form_for(column_type: Any, dialect: str, model: str, attribute: str) -> CanonicalForm:
    dialect_object = _dialect_object(dialect)
    resolved = column_type.dialect_impl(dialect_object)
    key = _Key(model, attribute, _shown(column_type), dialect, _ddl(column_type, dialect_object))
    if isinstance(resolved, sqltypes.TypeDecorator):
        return _decorated(resolved, dialect_object, key)
    stored, compared, extra = _builder_for(resolved, dialect, key)
    try:
        type_name = str(column_type.python_type.__name__)
    except NotImplementedError:
        type_name = extra.get("kind", "value")
    return CanonicalForm(
        column_type=key.shown_type,
        dialect=dialect,
        stored=stored,
        compared=compared,
        type_name=type_name,
        **extra,
    )


def _decorated(resolved: Any, dialect_object: Dialect, key: _Key) -> CanonicalForm:
    """A TypeDecorator: its impl's form, after its ``process_bind_param``."""
    impl = resolved.load_dialect_impl(dialect_object)
    inner = _form_for(impl, key.dialect, key.model, key.attribute)
    if type(resolved).process_bind_param is sqltypes.TypeDecorator.process_bind_param:
        return dataclasses.replace(inner, column_type=key.shown_type)
    process = resolved.process_bind_param

    def wrap(canonical: Canonical) -> Canonical:
        def decorated(value: Any) -> Any:
            try:
                processed = process(value, dialect_object)
            except Exception as error:
                key.refuse(value, f"{type(resolved).__name__}.process_bind_param failed ({error})")
            if processed is None:
                key.refuse(value, f"{type(resolved).__name__} stores it as NULL")
            return canonical(processed)

        return decorated

    return dataclasses.replace(
        inner,
        column_type=key.shown_type,
        stored=wrap(inner.stored),
        compared=wrap(inner.compared),
        converts=True,
    )


Built = tuple[Canonical, Canonical, dict[str, Any]]


_BINARY_TYPES = (  # BYTEA and BLOB are LargeBinary
    sqltypes.LargeBinary,
    sqltypes.BINARY,
    sqltypes.VARBINARY,
    mysql.TINYBLOB,
    mysql.MEDIUMBLOB,
    mysql.LONGBLOB,
)


def _builder_for(resolved: Any, dialect: str, key: _Key) -> Built:
    # order matters: Boolean, Enum and Uuid before their bases; Float before Numeric
    if isinstance(resolved, sqltypes.Boolean):
        return _boolean(key)
    if isinstance(resolved, sqltypes.Enum):
        return _enum(resolved, dialect, key)
    if isinstance(resolved, sqltypes.Uuid):
        return _uuid(resolved, dialect, key)
    if isinstance(resolved, sqltypes.String):
        return _string(resolved, dialect, key)
    if isinstance(resolved, sqltypes.Integer):
        return _integer(resolved, dialect, key)
    if isinstance(resolved, sqltypes.Float):
        return _float(resolved, dialect, key)
    if isinstance(resolved, sqltypes.Numeric):
        return _numeric(resolved, dialect, key)
    if isinstance(resolved, sqltypes.DateTime):
        return _datetime(resolved, dialect, key)
    if isinstance(resolved, sqltypes.Date):
        return _date(resolved, dialect, key)
    if isinstance(resolved, sqltypes.Time):
        return _time(resolved, dialect, key)
    if isinstance(resolved, _BINARY_TYPES):
        return _binary(resolved, dialect, key)
    raise ModelConfigurationError(
        f"{key.model}.{key.attribute} is a shard key of column type {key.shown_type}, which "
        "shardalchemy cannot route by the value the database stores (its canonical form is "
        "unknown); use an integer, string, numeric, date/time, UUID, enum, boolean or binary "
        "column, or a TypeDecorator over one"
    )


# -- integers -------------------------------------------------------------------------------

# what all three backends store, and compare, as that integer (verified: PostgreSQL's
# int4in, MariaDB's string-to-number and SQLite's affinity conversions skip spaces, tabs, CR
# and LF around the digits)
_INTEGER_TEXT = re.compile(r"[ \t\n\r]*([+-]?[0-9]+)[ \t\n\r]*")


def _integer_bits(resolved: Any, dialect: str, ddl: str) -> tuple[int, int]:
    if dialect == "sqlite":
        return -(2**63), 2**63 - 1  # every SQLite INTEGER is 64-bit
    if ddl.startswith("TINYINT") or isinstance(resolved, mysql.TINYINT):
        bits = 8
    elif ddl.startswith("SMALLINT") or isinstance(resolved, sqltypes.SmallInteger):
        bits = 16
    elif ddl.startswith("MEDIUMINT") or isinstance(resolved, mysql.MEDIUMINT):
        bits = 24
    elif ddl.startswith("BIGINT") or isinstance(resolved, sqltypes.BigInteger):
        bits = 64
    else:
        bits = 32
    if "UNSIGNED" in ddl or getattr(resolved, "unsigned", False):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _integer(resolved: Any, dialect: str, key: _Key) -> Built:
    low, high = _integer_bits(resolved, dialect, key.ddl)

    def make() -> Canonical:
        def slow(value: Any) -> Any:
            if isinstance(value, int):  # bool too: True is stored as 1
                number = int(value)
            elif isinstance(value, str):
                match = _INTEGER_TEXT.fullmatch(value)
                if match is None:
                    key.refuse(value, "not an integer literal ([+-]digits)")
                digits = match.group(1)
                if len(digits.lstrip("+-").lstrip("0")) > 20:
                    key.refuse(value, f"outside the column's range {low}..{high}")
                number = int(digits)
            elif isinstance(value, float):
                if not math.isfinite(value) or not value.is_integer():
                    key.refuse(value, "not an integer (the database would round or refuse it)")
                number = int(value)
            elif isinstance(value, decimal.Decimal):
                if not value.is_finite() or value != value.to_integral_value():
                    key.refuse(value, "not an integer (the database would round or refuse it)")
                number = int(value)
            else:
                key.refuse(value, f"a {type(value).__name__} is not an integer")
            if not low <= number <= high:
                key.refuse(value, f"outside the column's range {low}..{high}")
            return number

        def integer(value: Any) -> Any:
            if type(value) is int and low <= value <= high:  # the common key, first
                return value
            return slow(value)

        return integer

    canonical = make()
    return canonical, canonical, {"kind": "integer"}


# -- booleans -------------------------------------------------------------------------------


def _boolean(key: _Key) -> Built:
    def boolean(value: Any) -> Any:
        if value is True or value is False:
            return value
        if isinstance(value, int | float | decimal.Decimal) and value in (0, 1):
            return bool(value)  # SQLAlchemy's Boolean takes 0 and 1 for False and True
        key.refuse(value, "not True, False, 0 or 1")

    return boolean, boolean, {"kind": "boolean"}


# -- strings and collations ------------------------------------------------------------------

_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# MariaDB/MySQL collations under which every string is routed exactly: (pads spaces?)
_MYSQL_EXACT = {"utf8mb4_bin": True, "utf8mb4_nopad_bin": False}
# collations under which two printable-ASCII strings can be equal though they differ by more
# than case and trailing spaces (found by the exhaustive check in tests/test_canonical_keys.py)
_MYSQL_FOLD_REFUTED = re.compile(
    r"roman|lithuanian|^(big5|gb2312|gbk|cp1251_ukrainian|geostd8|koi8u|macce)_"
    r"|0900",  # MySQL 8's collations: not checked on a MySQL server (their tailorings differ)
    re.IGNORECASE,
)
# the character sets whose every collation (those above aside) was checked (not swe7, which
# has no '[', '@', ...: stored as '?', they equal each other)
_MYSQL_FOLD_CHARSETS = re.compile(
    r"^(utf8mb4|utf8mb3|utf8|latin1|latin2|latin5|latin7|ascii|ucs2|utf16|utf16le|utf32|cp1250|"
    r"cp1251|cp1256|cp1257|cp850|cp852|cp866|cp932|dec8|eucjpms|euckr|greek|hebrew|hp8|keybcs2|"
    r"koi8r|sjis|tis620|ujis|armscii8)_",
    re.IGNORECASE,
)
_MYSQL_BINARY_ADVICE = (
    "declare the column with a binary collation, e.g. String(50, collation='utf8mb4_bin'), "
    "under which every string routes exactly"
)

_POSTGRESQL_DETERMINISTIC = re.compile(
    r"C|POSIX|default|ucs_basic|pg_c_utf8|unicode|C\.[A-Za-z0-9-]+|[a-z]{2,3}(_[A-Za-z]{2,4})*"
    r"(\.[A-Za-z0-9-]+)?(@[A-Za-z]+)?|[A-Za-z0-9-]+-x-icu"
)


def mysql_fold_proved(collation: str) -> bool:
    """Whether printable-ASCII strings equal under ``collation`` fold to one form.

    >>> mysql_fold_proved("utf8mb4_general_ci"), mysql_fold_proved("utf8mb4_roman_ci")
    (True, False)
    """
    name = collation.lower()
    if name in _MYSQL_EXACT:
        return True
    if name.startswith("uca1400_"):
        name = "utf8mb4_" + name  # MariaDB 10.10+ names UCA-14 collations without a charset
    return bool(_MYSQL_FOLD_CHARSETS.match(name)) and not _MYSQL_FOLD_REFUTED.search(name)


_FIXED_LENGTH = re.compile(r"(CHAR|NCHAR|NATIONAL CHAR|CHARACTER|BPCHAR)(\(| |$)")
_DECLARED_COLLATION = re.compile(r' COLLATE "?([^" ]+)"?')


def _fixed_length(resolved: Any, ddl: str) -> bool:
    if ddl:
        return bool(_FIXED_LENGTH.match(ddl)) and "VARYING" not in ddl
    return isinstance(resolved, sqltypes.CHAR | sqltypes.NCHAR | mysql.CHAR | mysql.NCHAR)


def _collation(resolved: Any, ddl: str) -> str | None:
    declared = _DECLARED_COLLATION.search(ddl)
    if declared is not None:  # the DDL upper-cases it: take the type's own spelling if it has one
        name: str | None = getattr(resolved, "collation", None)
        return name if name and name.upper() == declared.group(1) else declared.group(1)
    return getattr(resolved, "collation", None)


def _utf8(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(resolved: Any, dialect: str, key: _Key) -> Built:
    collation = _collation(resolved, key.ddl)
    length: int | None = getattr(resolved, "length", None)
    fixed = _fixed_length(resolved, key.ddl)
    checks: dict[str, CollationCheck] = {}
    folds = False  # lower-case printable ASCII, refuse the rest
    pads = False  # trailing spaces are not significant
    lowers_ascii = False  # ASCII A-Z folded, the rest exact (SQLite NOCASE, CITEXT)
    if dialect == "sqlite":
        name = (collation or "BINARY").upper()
        if name == "NOCASE":
            lowers_ascii = True
        elif name == "RTRIM":
            pads = True
        elif name != "BINARY":
            raise ModelConfigurationError(
                f"{key.model}.{key.attribute} is a string shard key in SQLite collation "
                f"{collation!r}, whose equality shardalchemy does not know; use BINARY, NOCASE "
                "or RTRIM"
            )
        length = None  # SQLite stores any length
    elif dialect == "postgresql":
        if key.ddl == "CITEXT" or isinstance(resolved, postgresql.CITEXT):
            folds = True  # citext compares lower(): ASCII lower-casing is coarser, others refused
            pads = False
        elif collation is not None and not _POSTGRESQL_DETERMINISTIC.fullmatch(collation):
            raise ModelConfigurationError(
                f"{key.model}.{key.attribute} is a string shard key in PostgreSQL collation "
                f"{collation!r}, which shardalchemy cannot tell is deterministic; under a "
                "non-deterministic collation strings equal in SQL differ in bytes, so they "
                "cannot be routed: use a deterministic collation (C, a libc locale or an "
                "'-x-icu' collation)"
            )
        pads = pads or fixed
        checks["postgresql"] = _postgresql_check
    else:  # mariadb, mysql
        exact_pads = _MYSQL_EXACT.get(collation.lower()) if collation else None
        if exact_pads is None:
            if collation is not None and not mysql_fold_proved(collation):
                raise ModelConfigurationError(
                    f"{key.model}.{key.attribute} is a string shard key in collation "
                    f"{collation!r}, under which shardalchemy has no proved form of equal "
                    f"strings; {_MYSQL_BINARY_ADVICE}"
                )
            folds = True
            pads = True
        else:
            pads = exact_pads or fixed
        checks["mariadb"] = checks["mysql"] = _mysql_check(collation, key)

    if dialect in ("mariadb", "mysql"):
        beyond_ascii = (
            f"under collation {collation or '(the database default)'} a string other than "
            f"printable ASCII may equal strings that differ from it; {_MYSQL_BINARY_ADVICE}"
        )
    else:
        beyond_ascii = "a citext string other than printable ASCII is compared by the locale"

    def fold_or_refuse(value: str) -> str:
        if not _PRINTABLE_ASCII.fullmatch(value):
            key.refuse(value, beyond_ascii)
        folded = value.lower()
        return folded.rstrip(" ") if pads else folded

    def exact(value: str) -> str:
        if not _utf8(value):
            key.refuse(value, "not valid Unicode (a lone surrogate)")
        if lowers_ascii:
            value = value.translate(_ASCII_UPPER)
        return value.rstrip(" ") if pads else value

    canonical = fold_or_refuse if folds else exact

    def stored(value: Any) -> Any:
        if type(value) is not str:
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # every backend stores an int as its decimal text
            elif isinstance(value, str):
                value = str.__str__(value)  # a str subclass: its characters, as drivers send
            else:
                key.refuse(
                    value, f"a {type(value).__name__} is stored differently by each database"
                )
        if length is not None and len(value) > length:
            if value[length:].strip(" "):
                key.refuse(value, f"longer than {length} characters (refused or truncated)")
            value = value[:length]  # the server drops excess trailing spaces
        return canonical(value)

    def compared(value: Any) -> Any:
        if type(value) is not str:
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and dialect
                not in (
                    "mariadb",
                    "mysql",
                )
            ):
                value = str(value)
            elif isinstance(value, str):
                value = str.__str__(value)
            else:
                key.refuse(
                    value,
                    f"a string column compared with a {type(value).__name__} is compared "
                    "as numbers or refused",
                )
        return canonical(value)

    return stored, compared, {"orders": False, "kind": "string", "collation_checks": checks}


def _postgresql_check(collation: str | None, deterministic: bool | None) -> str | None:
    if deterministic is False:
        return (
            f"its collation {collation!r} is non-deterministic: strings equal in SQL differ in "
            "bytes, so they cannot be routed by value; use a deterministic collation"
        )
    return None


def _mysql_check(declared: str | None, key: _Key) -> CollationCheck:
    def check(actual: str | None, deterministic: bool | None) -> str | None:
        if actual is None:
            return None
        if declared is not None and declared.lower() in _MYSQL_EXACT:
            if actual.lower() != declared.lower():
                return (
                    f"it is declared with collation {declared!r} but has collation {actual!r} "
                    "on the server; alter the column or fix the declaration"
                )
            return None
        if not mysql_fold_proved(actual):
            return (
                f"its collation is {actual!r}, under which shardalchemy has no proved form of "
                f"equal strings; {_MYSQL_BINARY_ADVICE}"
            )
        return None

    return check


# -- enums ----------------------------------------------------------------------------------


def _enum(resolved: Any, dialect: str, key: _Key) -> Built:
    dialect_object = _dialect_object(dialect)
    process = resolved.bind_processor(dialect_object)
    values = frozenset(resolved.enums)
    checks: dict[str, CollationCheck] = {}
    if dialect in ("mariadb", "mysql") and not key.ddl.startswith("ENUM"):
        # a VARCHAR in the table's collation: two members equal there would be one key
        collation = getattr(resolved, "collation", None)
        if collation is None or collation.lower() not in _MYSQL_EXACT:
            folded: dict[str, str] = {}
            for value in resolved.enums:
                other = folded.setdefault(value.lower().rstrip(" "), value)
                if other != value:
                    raise ModelConfigurationError(
                        f"{key.model}.{key.attribute}: enum values {other!r} and {value!r} may be "
                        f"one value under the column's collation; {_MYSQL_BINARY_ADVICE}"
                    )
            checks["mariadb"] = checks["mysql"] = _mysql_check(collation, key)

    def enum(value: Any) -> Any:
        try:
            stored = process(value) if process is not None else value
        except Exception as error:
            key.refuse(value, f"not a value of the enum ({error})")
        if stored not in values:
            key.refuse(value, f"not one of the enum's values {sorted(values)}")
        return stored

    return enum, enum, {"orders": False, "kind": "enum", "collation_checks": checks}


# -- UUIDs ----------------------------------------------------------------------------------

_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)


def _uuid(resolved: Any, dialect: str, key: _Key) -> Built:
    as_uuid = getattr(resolved, "as_uuid", True)

    def parse(value: Any) -> uuid.UUID:
        if type(value) is uuid.UUID:
            return value
        if isinstance(value, uuid.UUID):
            return uuid.UUID(int=value.int)
        if isinstance(value, str) and _UUID_TEXT.fullmatch(value):
            return uuid.UUID(value)
        key.refuse(value, "not a UUID (a uuid.UUID, or 32 hex digits with or without dashes)")

    def stored(value: Any) -> Any:
        if dialect == "sqlite":
            # SQLAlchemy's Uuid on SQLite calls value.hex (as_uuid) or value.replace (not)
            if as_uuid and not isinstance(value, uuid.UUID):
                key.refuse(value, "SQLAlchemy's Uuid(as_uuid=True) on SQLite takes uuid.UUID")
            if not as_uuid and not isinstance(value, str):
                key.refuse(value, "SQLAlchemy's Uuid(as_uuid=False) on SQLite takes str")
        return parse(value)

    return stored, parse, {"orders": False, "kind": "uuid"}


# -- numbers --------------------------------------------------------------------------------

_DECIMAL_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)")


def _significant_digits(number: decimal.Decimal) -> int:
    return len(number.normalize().as_tuple().digits)


_WIDE = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP)


def _numeric(resolved: Any, dialect: str, key: _Key) -> Built:
    precision: int | None = resolved.precision
    scale: int | None = resolved.scale
    if dialect in ("mariadb", "mysql"):
        # MariaDB's bare NUMERIC is DECIMAL(10, 0); NUMERIC(p) is DECIMAL(p, 0)
        precision = 10 if precision is None else precision
        scale = 0 if scale is None else scale
    elif precision is not None and scale is None:
        scale = 0
    if dialect == "sqlite":
        return _sqlite_numeric(resolved, key)
    quantum = decimal.Decimal(1).scaleb(-scale) if scale is not None else None
    # a float (or a string, on MariaDB) is compared as a double: one stored value per double
    # only while the column's values have at most 15 digits
    doubles_are_unique = precision is not None and precision <= 15

    def as_decimal(value: Any, comparing: bool) -> decimal.Decimal:
        if isinstance(value, decimal.Decimal):
            number = value
        elif isinstance(value, int) and not isinstance(value, bool):
            number = decimal.Decimal(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                key.refuse(value, "not a finite number")
            number = decimal.Decimal(repr(value))
            if _significant_digits(number) > 15:
                key.refuse(value, "a float of more than 15 digits is converted inexactly")
            if comparing and not doubles_are_unique:
                key.refuse(value, "compared as a double, which matches several stored values")
        elif isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
            number = decimal.Decimal(value)
            inexact = not doubles_are_unique or _significant_digits(number) > 15
            if comparing and dialect != "postgresql" and inexact:
                key.refuse(value, "a string is compared as a double, inexactly")
        else:
            key.refuse(value, f"a {type(value).__name__} is not a decimal number")
        if not number.is_finite():
            key.refuse(value, "not a finite number")
        return number

    def make(comparing: bool) -> Canonical:
        def numeric(value: Any) -> Any:
            number = as_decimal(value, comparing)
            if quantum is not None:
                try:
                    number = number.quantize(quantum, context=_WIDE)  # half away from zero
                except decimal.InvalidOperation:
                    key.refuse(value, f"too large for NUMERIC({precision}, {scale})")
            if precision is not None:
                whole = len(number.as_tuple().digits) + number.as_tuple().exponent  # type: ignore[operator]
                if number and whole > precision - (scale or 0):
                    key.refuse(value, f"too large for NUMERIC({precision}, {scale})")
            return number

        return numeric

    return make(False), make(True), {"kind": "numeric"}


def _sqlite_numeric(resolved: Any, key: _Key) -> Built:
    dialect_object = _dialect_object("sqlite")
    process = resolved.bind_processor(dialect_object) or float

    def stored(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | decimal.Decimal | str):
            key.refuse(value, f"a {type(value).__name__} is not a number")
        try:
            number = process(value)  # what SQLAlchemy sends SQLite: float(value)
        except (TypeError, ValueError):
            key.refuse(value, "not a number SQLAlchemy can send")
        if not isinstance(number, float) or not math.isfinite(number):
            key.refuse(value, "not a finite number")
        return decimal.Decimal(repr(number))  # SQLite stores that double

    def compared(value: Any) -> Any:
        if isinstance(value, str) and (
            not _DECIMAL_TEXT.fullmatch(value) or _significant_digits(decimal.Decimal(value)) > 15
        ):
            key.refuse(value, "a string is converted to a number by SQLite's own rules")
        return stored(value)

    return stored, compared, {"kind": "numeric"}


_FLOAT_PRECISION = re.compile(r"FLOAT\((\d+)")


def _single_precision(dialect: str, ddl: str) -> bool:
    if dialect == "sqlite" or ddl.startswith("DOUBLE"):
        return False  # SQLite's REAL is 8 bytes
    if ddl.startswith("REAL"):
        return True  # PostgreSQL's REAL is float4
    precision = _FLOAT_PRECISION.match(ddl)
    if precision is None:
        return dialect in ("mariadb", "mysql")  # FLOAT: MariaDB's is single, PostgreSQL's double
    return int(precision.group(1)) <= 24


def _float(resolved: Any, dialect: str, key: _Key) -> Built:
    if dialect in ("mariadb", "mysql") and key.ddl.startswith("REAL"):
        raise ModelConfigurationError(
            f"{key.model}.{key.attribute}: REAL is DOUBLE or FLOAT on MariaDB depending on the "
            "server's sql_mode; declare Float() or Double() instead"
        )
    single = _single_precision(dialect, key.ddl)
    takes_decimal = dialect in ("sqlite", "postgresql")

    def floating(value: Any) -> Any:
        if type(value) is float:
            number = value
        elif isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            number = float(value)
        elif isinstance(value, decimal.Decimal) and value.is_finite():
            number = float(value)
            # MariaDB converts a decimal literal itself: only a double's own repr is known
            if not takes_decimal and decimal.Decimal(repr(number)) != value:
                key.refuse(value, "a Decimal that is not a double's shortest repr")
        else:
            key.refuse(value, f"a {type(value).__name__} is not a float")
        if not math.isfinite(number):
            key.refuse(value, "not a finite number")
        if single:
            try:
                number = struct.unpack("<f", struct.pack("<f", number))[0]
            except OverflowError:
                key.refuse(value, "too large for a single-precision float")
        # the double as the exact decimal of its shortest repr (-0.0 is 0.0): hashable as
        # shard keys are, and equal to the float for lookups and ranges
        return decimal.Decimal(repr(number + 0.0))

    return floating, floating, {"kind": "float"}


# -- dates and times ------------------------------------------------------------------------

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_POSTGRESQL_EPOCH = datetime.datetime(2000, 1, 1)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _round_postgresql(value: datetime.datetime, digits: int) -> datetime.datetime:
    """PostgreSQL's TIMESTAMP(p): microseconds from 2000-01-01, rounded half away from zero."""
    if digits >= 6:
        return value
    unit = 10 ** (6 - digits)
    offset = (value - _POSTGRESQL_EPOCH) // _MICROSECOND
    if offset >= 0:
        offset = (offset + unit // 2) // unit * unit
    else:
        offset = -((-offset + unit // 2) // unit * unit)
    return _POSTGRESQL_EPOCH + datetime.timedelta(microseconds=offset)


_FRACTION_DIGITS = re.compile(r"(TIMESTAMP|DATETIME|TIME)\((\d+)\)")


def _fraction_digits(resolved: Any, dialect: str, ddl: str) -> int:
    declared = _FRACTION_DIGITS.match(ddl)
    if declared is not None:
        return int(declared.group(2))
    if dialect == "postgresql":
        precision = getattr(resolved, "precision", None)
        return 6 if precision is None else int(precision)
    fsp = getattr(resolved, "fsp", None)
    return 0 if fsp is None else int(fsp)


def _sqlite_round_trip(resolved: Any, key: _Key) -> Callable[[Any, Any], Any]:
    """What SQLAlchemy's SQLite date/time type stores, read back as it reads it."""
    dialect_object = _dialect_object("sqlite")
    to_text = resolved.bind_processor(dialect_object)
    from_text = resolved.result_processor(dialect_object, None)

    def round_trip(original: Any, value: Any) -> Any:
        try:
            text = to_text(value) if to_text is not None else value
            return from_text(text) if from_text is not None else text
        except Exception as error:
            key.refuse(original, f"SQLAlchemy's SQLite type does not store it ({error})")

    return round_trip


def _date(resolved: Any, dialect: str, key: _Key) -> Built:
    round_trip = _sqlite_round_trip(resolved, key) if dialect == "sqlite" else None

    def make(comparing: bool) -> Canonical:
        def date(value: Any) -> Any:
            if type(value) is datetime.date:
                day = value
            elif isinstance(value, datetime.datetime):
                if value.utcoffset() is not None:
                    key.refuse(value, "an aware datetime's date depends on the time zone")
                day = value.date()
            elif isinstance(value, datetime.date):
                day = datetime.date(value.year, value.month, value.day)
            elif (
                isinstance(value, str)
                and _ISO_DATE.fullmatch(value)
                and (dialect != "sqlite" or comparing)
            ):
                try:
                    day = datetime.date.fromisoformat(value)
                except ValueError:
                    key.refuse(value, "not a date")
            else:
                key.refuse(value, f"a {type(value).__name__} is not a date")
            return round_trip(value, day) if round_trip is not None else day

        return date

    return make(False), make(True), {"kind": "date"}


def _datetime(resolved: Any, dialect: str, key: _Key) -> Built:
    if dialect in ("mariadb", "mysql") and (
        key.ddl.startswith("TIMESTAMP") or isinstance(resolved, mysql.TIMESTAMP)
    ):
        raise ModelConfigurationError(
            f"{key.model}.{key.attribute}: a MariaDB TIMESTAMP shard key is stored in UTC from "
            "the session's time zone, which shardalchemy cannot know; use DATETIME"
        )
    if dialect == "postgresql" and key.ddl:
        aware = "WITH TIME ZONE" in key.ddl
    else:
        aware = bool(getattr(resolved, "timezone", False))
    digits = _fraction_digits(resolved, dialect, key.ddl)
    round_trip = _sqlite_round_trip(resolved, key) if dialect == "sqlite" else None
    unit = 10 ** (6 - min(digits, 6))

    def canonical_moment(value: Any) -> Any:
        if type(value) is datetime.datetime:
            moment = value
        elif isinstance(value, datetime.datetime):
            moment = datetime.datetime(
                value.year, value.month, value.day, value.hour, value.minute, value.second,
                value.microsecond, value.tzinfo, fold=value.fold,
            )  # fmt: skip
        elif isinstance(value, datetime.date):
            if aware and dialect == "postgresql":
                key.refuse(value, "a date's midnight depends on the session time zone")
            moment = datetime.datetime(value.year, value.month, value.day)
        else:
            key.refuse(value, f"a {type(value).__name__} is not a datetime")
        offset = moment.utcoffset()
        if dialect == "postgresql" and aware:
            if offset is None:
                key.refuse(value, "a naive datetime is read in the session time zone")
            utc = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            try:
                utc = _round_postgresql(utc, digits)
            except OverflowError:
                key.refuse(value, "out of range once rounded")
            return utc.replace(tzinfo=datetime.timezone.utc)
        if offset is not None and not (dialect == "sqlite" and aware):
            key.refuse(
                value,
                "an aware datetime for a column without a time zone is stored by the session's "
                "or driver's time zone; pass a naive datetime",
            )
        if dialect == "sqlite":
            assert round_trip is not None
            return round_trip(value, moment.replace(tzinfo=None))
        if dialect == "postgresql":
            try:
                return _round_postgresql(moment, digits)
            except OverflowError:
                key.refuse(value, "out of range once rounded")
        # MariaDB truncates the fraction to fsp digits; MySQL rounds it
        extra = moment.microsecond % unit
        if extra and dialect == "mysql":
            key.refuse(
                value,
                f"more than {digits} fractional digits: MariaDB truncates them, MySQL rounds "
                "them, and a mysql:// URL may be either",
            )
        return moment - datetime.timedelta(microseconds=extra)

    return canonical_moment, canonical_moment, {"kind": "datetime"}


def _time(resolved: Any, dialect: str, key: _Key) -> Built:
    if getattr(resolved, "timezone", False) or "WITH TIME ZONE" in key.ddl:
        raise ModelConfigurationError(
            f"{key.model}.{key.attribute}: a time with time zone shard key compares by an offset "
            "shardalchemy cannot know; use a naive TIME"
        )
    digits = _fraction_digits(resolved, dialect, key.ddl)
    unit = 10 ** (6 - min(digits, 6))
    round_trip = _sqlite_round_trip(resolved, key) if dialect == "sqlite" else None

    def time(value: Any) -> Any:
        if not isinstance(value, datetime.time):
            key.refuse(value, f"a {type(value).__name__} is not a time")
        if value.utcoffset() is not None:
            key.refuse(value, "an aware time is compared by an offset")
        plain = datetime.time(value.hour, value.minute, value.second, value.microsecond)
        if round_trip is not None:
            return round_trip(value, plain)
        extra = plain.microsecond % unit
        if not extra:
            return plain
        if dialect == "postgresql":
            micros = plain.microsecond - extra + (unit if extra * 2 >= unit else 0)
            if micros < 1_000_000:
                return plain.replace(microsecond=micros)
            moment = datetime.datetime.combine(
                datetime.date(2000, 1, 1), plain.replace(microsecond=0)
            )
            moment += datetime.timedelta(seconds=1)
            if moment.date() != datetime.date(2000, 1, 1):
                key.refuse(value, "rounds to 24:00:00")
            return moment.time()
        if dialect == "mysql":
            key.refuse(
                value, f"more than {digits} fractional digits: MariaDB truncates, MySQL rounds"
            )
        return plain.replace(microsecond=plain.microsecond - extra)

    return time, time, {"kind": "time"}


# -- binary ---------------------------------------------------------------------------------


def _binary(resolved: Any, dialect: str, key: _Key) -> Built:
    if dialect in ("mariadb", "mysql") and (
        key.ddl.startswith("BINARY") or isinstance(resolved, sqltypes.BINARY | mysql.BINARY)
    ):
        raise ModelConfigurationError(
            f"{key.model}.{key.attribute}: MariaDB's BINARY(n) pads values with zero bytes; use "
            "VARBINARY or LargeBinary for a binary shard key"
        )

    def binary(value: Any) -> Any:
        if type(value) is bytes:
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        key.refuse(value, f"a {type(value).__name__} is not bytes")

    return binary, binary, {"kind": "binary"}
