"""Execution: runs one statement on several shards at once, sync or async.

:mod:`.fan_out` runs and bounds the work, :mod:`.cancellation` stops
statements through each driver, :mod:`.probing` asks a shard's database what
the planner needs to know.
"""

from .fan_out import Outcome, fan_out
from .probing import database_facts, dialect_facts

__all__ = ["Outcome", "database_facts", "dialect_facts", "fan_out"]
