"""The plan, the seam between planning and execution, and everything that reads it.

Owns the plan types (``types``) and their forms (``forms``), the one codec (``codec``:
document, file text, sha256; its JSON fast path private, ``_json_fast``), the JSON
Schema (``schema``), plan files (``files``), the text and Markdown
renderings (``text``, ``markdown``), plan diffs (``diff``), source fingerprints
(``fingerprints``) and review comparisons (``review``). May import ``checkpoints``
(fingerprints), ``transforms`` (descriptions), ``keys`` and ``core``; never ``recipe``.
"""
