"""Tensor keys and regions: one grammar, parsed and printed.

Owns key patterns and templates (``patterns``: globs, ``{i}`` variables, ranges, sets,
arithmetic, the sorted key index), tensor regions (``regions``: ``[:, :10]``), and folding
of key lists into brace lines (``folding``), the inverse of pattern expansion. Pure
string and integer work: imports only ``core``.
"""
