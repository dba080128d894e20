"""The planner's rewrites, one per module: what a multi-shard plan changes, and why it is exact.

Most rewrite the whole plan in progress: one function from a
:class:`~..draft.Draft` to the draft rewritten, applied in the order of
:data:`~..planner.REWRITES`.  Each changes the statement each shard runs,
adds the hidden columns it needs to the per-shard row
(:class:`~..columns.Columns`) and puts its merge operator in its place; one
that does not apply to the draft's ``shape`` returns it unchanged.

Two decompose one aggregate each, where the planner meets it (the select
list, an expression, HAVING, ORDER BY), so that the per-shard columns come in
the order the statement names them: :mod:`.split_avg` and
:mod:`.push_down_distinct`, tried in the order of
:data:`~..aggregates.AGGREGATE_REWRITES`; each returns the aggregate's slot,
or ``None`` when it does not apply.

To add a rewrite: write its module here (the function, named as the module;
a docstring saying what it rewrites and why the answer stays exact; an
example that runs as a doctest) and put the function in its list, after the
rewrites whose work it reads.  ``tests/test_planner.py`` checks that every
module here is listed and has its example.
"""
