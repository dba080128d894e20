"""The planner's rewrites, one per module, applied in the order of :data:`~..planner.REWRITES`.

Each rewrite is one function from a :class:`~..draft.Draft` (a plan in
progress) to the draft rewritten: it changes the statement each shard runs,
adds the hidden columns it needs to the per-shard row
(:class:`~..columns.Columns`) and puts its merge operator in its place.  A
rewrite that does not apply to the draft's ``shape`` returns it unchanged.
To add one: write its module here (the function, a docstring saying what it
rewrites and why the answer stays exact, an example that runs as a doctest)
and put the function in ``REWRITES`` where what it reads has been written.
"""
