"""Execution: run a ``Plan`` into a written, verified checkpoint. Never reads a recipe.

Owns the streaming executor (``executor``), the plan's sources opened and checked
against their fingerprints (``sources``), initial values of kept tensors (``initial``),
the parts of an output beyond its tensors (``outputs``) and progress reporting
(``progress``). May import ``plans``, ``checkpoints``, ``transforms``, ``keys`` and
``core``; never ``recipe`` or ``planning`` (an import-linter contract).
"""
