"""The planner: recipe x source inventories x target inventory -> ``Plan``.

Owns rule expansion (``expand``), selection by module type and kind (``selection``),
the output layout (``layout``: shards and copied files, hashed) and the planner itself
(``planner``). Reads checkpoint headers only, never tensor data. May import ``recipe``,
``plans``, ``keys``, ``checkpoints``, ``transforms`` (shape rules) and ``core``; never
``execution``.
"""
