"""Recipes: from a composed Hydra config to a typed ``Recipe``.

Owns the recipe schema and its parser (``parse``), the run switches of ``graft``
(``run_options``), OmegaConf resolution and torchgraft's resolvers (``resolve``), and the
Hydra config source that maps ``recipe=NAME`` to ``./recipes`` or the bundled recipes
(``source``). May import ``core`` and ``keys``; never ``plans``, ``planning`` or
``execution``: a recipe is data until the planner reads it.
"""
