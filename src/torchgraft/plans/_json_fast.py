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

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torchgraft.plans.forms import Forms

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
    """A list of JSON objects, described so that it can be dumped form by form:
    ``build(item, keys)`` is the item's object with ``keys`` in place of its own."""

    items: Sequence[Any]
    forms: Forms
    build: Callable[[Any, Sequence[str]], dict]

    def items_text(self, indent: int | None, separator: str | None = None) -> tuple[str, list[dict]]:
        """The items' texts, joined as in a list one level deep (items two levels deep),
        or by ``separator``; and one object per form (what a schema check of the list
        needs to see)."""
        margin = "\n" + " " * (2 * (indent or 0))
        if separator is None:
            separator = "," if indent is None else "," + margin
        firsts = [self.items[i] for i in self.forms.firsts]  # one item of each form stands for all
        samples = [self.build(item, self.forms.keys[i]) for item, i in zip(firsts, self.forms.firsts)]
        templates = [self._template(item, len(self.forms.keys[i]), indent, margin) for item, i in zip(firsts, self.forms.firsts)]
        if None not in templates:
            # One format string for the whole list, all keys put in at once: no Python
            # work per item but looking up its form's template.
            text = separator.join([templates[n] for n in self.forms.numbers])
            return text % tuple(map(_encode, itertools.chain.from_iterable(self.forms.keys))), samples
        texts = [
            templates[n] % tuple(map(_encode, keys)) if templates[n] is not None
            else dumps(self.build(firsts[n], keys), indent).replace("\n", margin)
            for n, keys in zip(self.forms.numbers, self.forms.keys)
        ]
        return separator.join(texts), samples

    def _template(self, item: Any, n_keys: int, indent: int | None, margin: str) -> str | None:
        """The text of ``item``'s form as a ``%`` template, ``%s`` where its keys go
        (JSON-encoded, in order). None if its keys are not written in their order, or
        another string of the object looks like a placeholder: then the form's items
        are dumped one by one."""
        text = dumps(self.build(item, [_placeholder(i) for i in range(n_keys)]), indent).replace("\n", margin)
        pieces = _PLACEHOLDER.split(text)
        if pieces[1::2] != [str(i) for i in range(n_keys)]:
            return None
        return "%s".join(piece.replace("%", "%%") for piece in pieces[0::2])


def document(members: dict[str, Any], indent: int | None = None, end: str = "") -> tuple[str, dict[str, list[dict]]]:
    """``dumps(members, indent) + end``, where ``Similar`` members are dumped form by
    form; and for each of those, one object per form. (The text can be 50 MB: its
    parts are joined once.)

    Indented, each item of a ``Similar`` list is one compact line: a plan's changed
    tensor is one changed line in a diff, and the file is a third smaller than fully
    indented JSON."""
    samples: dict[str, list[dict]] = {}
    margin = " " * (indent or 0)
    comma, colon = (",", ":") if indent is None else (",\n" + margin, ": ")
    out = ["{" if indent is None else "{\n" + margin]
    for name in sorted(members):
        out += [comma if len(out) > 1 else "", _encode(name), colon]
        value = members[name]
        if isinstance(value, Similar):
            one_per_line = None if indent is None else ",\n" + " " * (2 * indent)
            items, samples[name] = value.items_text(None, one_per_line)
            out += _list(items, indent)
        elif indent is None:
            out.append(dumps(value))
        else:
            out.append(dumps(value, indent).replace("\n", "\n" + margin))
    out += ["}" if indent is None else "\n}", end]
    return "".join(out), samples


def _list(items: str, indent: int | None) -> list[str]:
    """The parts of a list one level deep, of items already written and joined."""
    if indent is None:
        return ["[", items, "]"]
    if not items:
        return ["[]"]
    inner, outer = " " * (2 * indent), " " * indent
    return ["[\n", inner, items, "\n", outer, "]"]
