"""How a plan line says what a merge does: ``ties(base=base_model, density=0.5,
weights=[0.6, 0.4]) of math:k, code:k``, ``src:w + 2.0·(ad:B @ ad:A)``. Parameters at
their default are left out (plan.json has them all)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from torchgraft.core.merge_methods import LORA, METHODS


def merge_text(merge: object, reads: Sequence[str], keys: Sequence[str]) -> str:
    """``reads``: each read as ``source:key[region]``; ``keys``: the keys alone, in the same order."""
    try:
        return _text(merge, reads, keys)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):  # a plan file's spec that fits no method
        return f"merge {json.dumps(merge, sort_keys=True)}({' + '.join(reads)})"


def _text(merge: object, reads: Sequence[str], keys: Sequence[str]) -> str:
    if merge == "mean":
        return f"mean({' + '.join(reads)})"
    if not isinstance(merge, Mapping) or "method" not in merge:
        return f"weights {merge['weights']}({' + '.join(reads)})"
    if merge["method"] == LORA:
        text = reads[0]
        for i, adapter in enumerate(merge["adapters"]):
            product = f"({reads[2 + 2 * i]} @ {reads[1 + 2 * i]})" + ("ᵀ" if adapter["transpose"] else "")
            text += f" + {number(adapter['scale'])}·{product}"
        return text
    method = METHODS[merge["method"]]
    shown, models = [], list(reads)
    if method.base:
        models.pop()
        base = merge["base"]
        shown.append(f"base={base}" if keys[-1] == keys[0] else f"base={reads[-1]}")
    for param in method.params:
        value = merge[param.name]
        if value != param.default:
            shown.append(f"{param.name}={number(value) if param.numeric else str(value).lower()}")
    if method.weights and any(w != 1.0 for w in merge["weights"]):
        shown.append(f"weights=[{', '.join(number(w) for w in merge['weights'])}]")
    return f"{method.name}({', '.join(shown)}) of {', '.join(models)}"


def number(value: float) -> str:
    """Short and exact where it can be: 0.5, 0.333333 (a resolved gradient), 2.0."""
    text = repr(float(value))
    return text if len(text) <= 8 else format(value, ".6g")
