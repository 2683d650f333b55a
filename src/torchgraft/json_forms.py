"""JSON text for documents holding long lists of near-identical objects (a plan's
100k entries), byte for byte what ``json.dumps(..., sort_keys=True,
ensure_ascii=False)`` writes, compact or indented, in a fraction of its time.

Objects of one *form* -- equal in everything but a few strings, their keys -- differ
in their JSON text only where those strings go. Each form is dumped once, with
placeholders for the keys, and every object of the form is that text with its own
keys put in. (``json.dumps`` with ``indent`` runs in pure Python: 3.5 s for a
100k-entry plan; this takes a few tenths.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

_encode = json.encoder.encode_basestring  # how json.dumps writes a str when ensure_ascii=False
_PLACEHOLDER = re.compile(r'"\\u0000(\d+)\\u0000"')  # "\x00<i>\x00" as json writes it


def _placeholder(i: int) -> str:
    return f"\x00{i}\x00"


def dumps(value: Any, indent: int | None = None) -> str:
    """``json.dumps`` with sorted keys and no ASCII escaping: compact (``,`` and ``:``)
    without ``indent``, else indented. The hash of a plan and its file are made with it."""
    if indent is None:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Similar:
    """A list of JSON objects, described so that it can be dumped form by form.

    ``form(item)`` must be equal for two items exactly when their objects are equal
    but for the strings ``keys(item)``; ``build(item, keys)`` is the item's object with
    ``keys`` in place of its own.
    """

    items: Sequence[Any]
    form: Callable[[Any], Hashable]
    keys: Callable[[Any], Sequence[str]]
    build: Callable[[Any, Sequence[str]], dict]

    def texts(self, indent: int | None, depth: int) -> tuple[list[str], list[dict]]:
        """Each item's text, as it appears ``depth`` levels deep; and one object per form
        (what a schema check of the list needs to see)."""
        margin = "\n" + " " * (depth * (indent or 0))
        templates: dict[Hashable, tuple[list[str], list[int]] | None] = {}
        samples: list[dict] = []
        texts: list[str] = []
        for item in self.items:
            keys = self.keys(item)
            form = self.form(item)
            if form not in templates:
                samples.append(self.build(item, keys))
                templates[form] = self._template(item, len(keys), indent, margin)
            template = templates[form]
            if template is None:  # a form whose text placeholders cannot stand in (see _template)
                texts.append(dumps(self.build(item, keys), indent).replace("\n", margin))
                continue
            literals, order = template
            parts = [literals[0]]
            for i, literal in zip(order, literals[1:]):
                parts += (_encode(keys[i]), literal)
            texts.append("".join(parts))
        return texts, samples

    def _template(self, item: Any, n_keys: int, indent: int | None, margin: str) -> tuple[list[str], list[int]] | None:
        """The text of ``item``'s form: literal pieces, and which key goes between each two."""
        text = dumps(self.build(item, [_placeholder(i) for i in range(n_keys)]), indent).replace("\n", margin)
        pieces = _PLACEHOLDER.split(text)
        order = [int(i) for i in pieces[1::2]]
        if sorted(order) != list(range(n_keys)):  # another string of the object looks like a placeholder
            return None
        return pieces[0::2], order


def document(members: dict[str, Any], indent: int | None = None) -> tuple[str, dict[str, list[dict]]]:
    """``dumps(members, indent)``, where ``Similar`` members are dumped form by form; and
    for each of those, one object per form."""
    samples: dict[str, list[dict]] = {}
    parts = []
    for name in sorted(members):
        value = members[name]
        if isinstance(value, Similar):
            texts, samples[name] = value.texts(indent, 2)
            text = _list(texts, indent)
        elif indent is None:
            text = dumps(value)
        else:
            text = dumps(value, indent).replace("\n", "\n" + " " * indent)
        parts.append((_encode(name), text))
    if indent is None:
        return "{" + ",".join(f"{name}:{text}" for name, text in parts) + "}", samples
    margin = " " * indent
    return "{\n" + ",\n".join(f"{margin}{name}: {text}" for name, text in parts) + "\n}", samples


def _list(texts: list[str], indent: int | None) -> str:
    """A list one level deep, of items already written two levels deep."""
    if indent is None:
        return "[" + ",".join(texts) + "]"
    if not texts:
        return "[]"
    inner, outer = " " * (2 * indent), " " * indent
    return "[\n" + ",\n".join(inner + t for t in texts) + "\n" + outer + "]"
