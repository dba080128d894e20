"""Writes: bulk INSERT and UPDATE routed row by row, at bulk speed, all or nothing.

- :mod:`.routing`: the shard of each row;
- :mod:`.batch`: per-shard batches under savepoints, all or nothing;
- :mod:`.statements`: ``session.execute(insert(...), rows)`` and friends;
- :mod:`.legacy`: ``bulk_save_objects`` / ``bulk_insert_mappings`` /
  ``bulk_update_mappings``.

Depends on a session only through :class:`~.protocol.WritingSession`.
"""
