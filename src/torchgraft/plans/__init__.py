"""The plan, the seam between planning and execution, and everything that reads it.

Owns the plan types (``types``), its JSON document, sha256 and schema, with the JSON
fast path private (``_json_forms``), plan files (``files``), the text and Markdown
renderings (``text``, ``markdown``), plan diffs (``diff``), source fingerprints
(``fingerprints``) and review comparisons (``review``). May import ``checkpoints``
(fingerprints), ``transforms`` (descriptions), ``keys`` and ``core``; never ``recipe``.
"""
