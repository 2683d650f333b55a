"""Key patterns (select, exclude, keep), templates (rename, to, from) and renames.

One grammar for what a recipe writes and what the plan text prints (``keys.folding``
prints it): a pattern is dotted segments of literal text, ``*`` (any text within a
segment), ``**`` (any number of whole segments) and braces:

  ``{i}``                       a variable: one bare identifier, alone in its braces
  ``{i+N}`` ``{i-N}`` ``{i*N}`` ``{i//N}``  arithmetic on a variable (replacements only)
  ``{3..7}`` ``{7..3}`` ``{0..10..2}``  an integer range, inclusive, bash-style (a set)
  ``{0,3,7}`` ``{weight,bias}``  texts listed (a set): a comma makes a set, so ``{i}`` is
                                a variable and ``{i,j}`` matches the segment text ``i`` or ``j``

A set matches any one of its values at that place of a key (never a part of a value);
range values are integers written without leading zeros, listed values are matched as
written. A range stands for at most ``MAX_VALUES`` values, a stepped range or a list
for at most ``MAX_LISTED``; an integer in a pattern, or a key segment used in
arithmetic, has at most ``MAX_DIGITS`` digits.

A pattern is parsed into segments and compiled to one regex matched against
``"." + key``. The leading dot lets every segment compile to ``\\.SEGMENT`` and ``**``
to ``(?:\\.[^.]+)*``, so "zero or more segments" needs no special case at either end.
Character classes also exclude newlines, so that ``KeyIndex`` can scan many keys
joined by newlines in one regex pass. The regex matches in time linear in the key for
globs (see ``_segments_regex``): keys come from checkpoints, which anyone may write.
Regions (``[...]``) are split off before a text gets here.
"""

from __future__ import annotations

import bisect
import itertools
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_VALUES = 1_000_000  # values of one range {A..B}: its regex is a few classes per digit
MAX_LISTED = 10_000  # values of a list, or a stepped range: their regex lists every value, and a
# 10,000-value one takes 1 s to compile (100,000: 12 s)
MAX_DIGITS = 100  # digits of an integer in a pattern, or of a key segment used in arithmetic


class PatternError(ValueError):
    """A malformed pattern or template, or a template that cannot be filled.
    ``position``: which of several patterns given together (``KeyIndex.matches``) it is."""

    position: int | None = None


@dataclass(frozen=True)
class _Brace:
    """One ``{...}`` of a pattern: a variable, arithmetic on one, or a set of values."""

    text: str  # as written, braces included, for error messages
    name: str = ""  # variable name ("" for a set)
    op: str = ""  # "" for a plain variable; else one of + - * //
    operand: int = 0
    choices: Sequence[str] = ()  # a set's values, in the order written (a range in its order)
    regex: str = ""  # a set's regex: one value of it


_STAR = "*"
_GLOBSTAR = ("**",)  # a whole segment that is "**"
Part = str | _Brace  # a literal run, _STAR, or a brace
Segment = tuple[Part, ...]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VAR = re.compile(rf"\s*({_NAME})\s*")
_ARITH = re.compile(rf"\s*({_NAME})\s*(\+|-|\*|//)\s*(\d+)\s*")
_RANGE = re.compile(r"\s*(\d+)\s*\.\.\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?")
_ITEM = re.compile(r"[^{}.,\s]+")  # a listed value: text of one segment
_SYNTAX = (": expected {name}, {name+N}, {name-N}, {name*N}, {name//N}, {A..B}, {A..B..STEP} "
           "or {a,b,...}")
_END = r"(?=\.|\Z)"  # a match ends at a segment boundary
_BOUNDARY = r"(?=[.\n]|\Z)"  # the same, where keys are lines of one text (KeyIndex)


class KeyPattern:
    """A selection pattern (select, exclude, keep).

    A non-regex pattern matches the key itself or any module under it: ``conv1``
    matches ``conv1.weight`` but not ``conv10.weight``. ``re:`` patterns use
    ``re.search`` against the whole key.
    """

    def __init__(self, text: str):
        self.text = text
        if text.startswith("re:"):
            self._regex = _compile_user_regex(text)
            self._match: Callable = self._regex.search
        else:
            self._segments = _parse(text)
            self._body = _segments_regex(self._segments, lambda name: name, prefix=True)
            dotted = re.compile(self._body + _END).match
            self._match = lambda key: dotted("." + key)

    def matches(self, key: str) -> bool:
        return self._match(key) is not None

    def __repr__(self) -> str:
        return f"KeyPattern({self.text!r})"


def select_keys(keys: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Keys matched by any pattern, in the order of ``keys``."""
    return KeyIndex(keys).select(patterns)


def matching_counts(keys: Sequence[str], patterns: Sequence[str]) -> list[int]:
    """How many keys each pattern matches, so callers can report one that matches nothing."""
    return KeyIndex(keys).counts(patterns)


_MAX_PREFIXES = 64  # sets and ranges multiply a pattern's literal prefixes; past this, stop


class KeyIndex:
    """The keys of one inventory, prepared so that matching a pattern costs about what
    it matches, not what the inventory holds: 50 rules over 100k keys must not be 50
    scans of every key.

    The keys are sorted and joined one per line (``"\\n." + key``). The keys starting
    with a given text are then one run of lines, found by bisection, and a non-regex
    pattern's regex scans only the runs of its literal prefixes: ``layers.*.mlp`` scans
    the lines of ``layers...``. The regex is the one ``KeyPattern`` uses, so the runs
    only narrow where it looks. A pattern without wildcards needs no regex:
    ``layers.{0,1}.mlp`` matches the keys ``layers.0.mlp`` and ``layers.1.mlp`` and the
    runs of keys starting ``layers.0.mlp.`` and ``layers.1.mlp.``. ``re:`` patterns, and
    keys or patterns holding a newline, are matched key by key with ``KeyPattern``.
    The index is built on first use: keys that no non-regex pattern meets cost nothing.
    Measured on the 100k-tensor dry run of ``tests/benchmarks/bench.py`` (50 rules):
    ``plan()`` takes 2.65 s CPU with the index, 6.18 s matching key by key.
    """

    def __init__(self, keys: Sequence[str]):
        self.keys = keys
        self._usable: bool | None = None  # None until built
        self._order: list[int] = []  # positions in keys, in the order of the sorted keys
        self._sorted: list[str] = []  # the keys, sorted
        self._text = ""  # "\n." + key for each sorted key
        self._starts: list[int] = []  # where each line of _text starts, and len(_text)
        self._position: dict[int, int] = {}  # a line's start -> the key's position in keys

    def matches(self, patterns: Sequence[str]) -> list[list[int]]:
        """For each pattern, the positions in ``keys`` of the keys it matches, in no set
        order. Every pattern is compiled first: a malformed one fails before any is used."""
        compiled = []
        for position, text in enumerate(patterns):
            try:
                compiled.append(KeyPattern(text))
            except PatternError as err:
                err.position = position
                raise
        return [self._matching(pattern) for pattern in compiled]

    def counts(self, patterns: Sequence[str]) -> list[int]:
        return [len(found) for found in self.matches(patterns)]

    def select(self, patterns: Sequence[str]) -> list[str]:
        """Keys matched by any pattern, in the order of ``keys``."""
        return self.keys_at(self.matches(patterns))

    def keys_at(self, found: Sequence[Sequence[int]]) -> list[str]:
        """The keys at any of these lists of positions (``matches``), in the order of ``keys``."""
        return [self.keys[i] for i in sorted(set().union(*found))]

    def full_matches(self, template: Template) -> list[tuple[int, dict[str, str]]]:
        """``Template.match`` over all keys: the position and bindings of each key the
        template matches whole, in the order of ``keys``."""
        if not self.keys:
            return []
        if "\n" in template.text or not self._build():
            return [(i, b) for i, key in enumerate(self.keys) if (b := template.match(key)) is not None]
        whole = template._regexes()[0].pattern  # raises here, as match would, on arithmetic
        prefixes, _ = _literal_prefixes(template._segments)
        found = self._scan(whole + r"(?=\n|\Z)", prefixes)
        return sorted(((self._position[m.start()], m.groupdict()) for m in found), key=lambda item: item[0])

    def _matching(self, pattern: KeyPattern) -> list[int]:
        if pattern.text.startswith("re:") or "\n" in pattern.text or not self._build():
            return [i for i, key in enumerate(self.keys) if pattern.matches(key)]
        prefixes, whole = _literal_prefixes(pattern._segments)
        if whole:  # no wildcard: the keys equal to one of the texts, and the keys under one
            runs = _merged([self._equal(p) for p in prefixes] + [self._run(p + ".") for p in prefixes])
            return [i for lo, hi in runs for i in self._order[lo:hi]]
        position = self._position
        return [position[m.start()] for m in self._scan(pattern._body + r"(?=[.\n]|\Z)", prefixes)]

    def _scan(self, regex: str, prefixes: Sequence[str]) -> list[re.Match]:
        """Matches of ``regex`` (for ``"." + key``) from the start of a key's line, in the
        runs of keys starting with ``prefixes`` only; ``_position[m.start()]`` is the key's."""
        scan = re.compile(r"\n" + regex).finditer
        text, starts = self._text, self._starts
        runs = _merged([self._run(p) for p in prefixes])
        return [m for lo, hi in runs for m in scan(text, starts[lo], starts[hi])]

    def _build(self) -> bool:
        """Sort and join the keys, once. False if a key holds a newline: then lines
        cannot stand for keys, and every pattern is matched key by key."""
        if self._usable is None:
            self._usable = not any("\n" in key for key in self.keys)
            if self._usable:
                self._order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
                self._sorted = [self.keys[i] for i in self._order]
                self._text = "".join(["\n." + key for key in self._sorted])
                self._starts = list(itertools.accumulate([len(key) + 2 for key in self._sorted], initial=0))
                self._position = dict(zip(self._starts, self._order))
        return self._usable

    def _run(self, prefix: str) -> tuple[int, int]:
        """The run of sorted keys that start with ``prefix``."""
        lo = bisect.bisect_left(self._sorted, prefix)
        above = _least_above(prefix)
        return lo, (len(self._sorted) if above is None else bisect.bisect_left(self._sorted, above, lo))

    def _equal(self, text: str) -> tuple[int, int]:
        """The run of sorted keys equal to ``text`` (keys may repeat)."""
        lo = bisect.bisect_left(self._sorted, text)
        return lo, bisect.bisect_right(self._sorted, text, lo)


def _merged(runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs of sorted keys, overlaps joined (so no key is counted twice), in order."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(runs):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        elif lo < hi:
            merged.append((lo, hi))
    return merged


def _least_above(prefix: str) -> str | None:
    """The least text above every text that starts with ``prefix``; None if there is none."""
    stem = prefix.rstrip(chr(sys.maxunicode))
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None


def _literal_prefixes(segments: Sequence[Segment]) -> tuple[list[str], bool]:
    """Texts one of which starts every key the pattern matches, and whether they are the
    whole pattern (it has no wildcard). They are its literal start, one branch per
    number of a set or range; a star, a variable or ``**`` ends them."""
    prefixes = [""]
    for n, seg in enumerate(segments):
        if seg == _GLOBSTAR:
            return prefixes, False
        if n:
            prefixes = [p + "." for p in prefixes]
        for part in seg:
            if isinstance(part, str) and part != _STAR:
                prefixes = [p + part for p in prefixes]
            elif isinstance(part, _Brace) and part.choices and len(prefixes) * len(part.choices) <= _MAX_PREFIXES:
                prefixes = [p + choice for p in prefixes for choice in part.choices]
            else:
                return prefixes, False
    return prefixes, True


class Template:
    """A key template with variables, used on both sides of renames and explicit rules.

    ``variables`` are the names that appear plainly as ``{name}``: matching binds
    them. ``referenced`` also includes names used only in arithmetic, which only
    ``format`` can fill.
    """

    def __init__(self, text: str):
        if text.startswith("re:"):
            raise PatternError(f"'{text}': a regular expression cannot be used as a template; "
                               "use {name} variables")
        self.text = text
        self._segments = _parse(text)
        self._braces = [part for seg in self._segments for part in seg if isinstance(part, _Brace)]
        self.variables = _unique(b.name for b in self._braces if b.name and not b.op)
        self.referenced = _unique(b.name for b in self._braces if b.name)
        self._compiled: tuple[re.Pattern, re.Pattern] | None = None
        plain = all(isinstance(p, str) and p != _STAR or isinstance(p, _Brace) and p.name and not p.op
                    for seg in self._segments if seg != _GLOBSTAR for p in seg)
        self._plain_format = ".".join(
            "".join(p if isinstance(p, str) else "{" + p.name + "}" for p in seg) for seg in self._segments
        ) if plain and _GLOBSTAR not in self._segments else None

    def match(self, key: str) -> dict[str, str] | None:
        """Bindings if the template matches the whole key, else None."""
        found = self._regexes()[0].fullmatch("." + key)
        return None if found is None else found.groupdict()

    def match_prefix(self, key: str) -> tuple[dict[str, str], str] | None:
        """Bindings and the rest of the key ("" or ".rest") if the template matches a dotted prefix."""
        dotted = "." + key
        found = self._regexes()[1].match(dotted)
        return None if found is None else (found.groupdict(), dotted[found.end():])

    def format(self, bindings: Mapping[str, str]) -> str:
        """Fill variables and arithmetic; raises ``PatternError`` if a value is missing or unusable."""
        if self._plain_format is not None:  # only literals and {name}: str.format, 5x faster
            try:
                return self._plain_format.format_map(bindings)
            except KeyError:
                pass  # the slow path raises the right PatternError
        out = []
        for seg in self._segments:
            if seg == _GLOBSTAR:
                raise _not_fillable("**")
            out.append("".join(_fill(part, bindings) for part in seg))
        return ".".join(out)

    def _check_fillable(self) -> None:
        """Raise the error ``format`` would raise for a wildcard, range or set."""
        for seg in self._segments:
            for part in (("**",) if seg == _GLOBSTAR else seg):
                if part in ("*", "**") or isinstance(part, _Brace) and part.choices:
                    raise _not_fillable(part if isinstance(part, str) else part.text)

    def _regexes(self) -> tuple[re.Pattern, re.Pattern]:
        """For a full match and for a dotted prefix. Their named groups are exactly the
        ``variables`` (a repeated name is a backreference), so ``groupdict`` binds them."""
        if self._compiled is None:
            body = _segments_regex(self._segments, lambda name: name)
            prefix = _segments_regex(self._segments, lambda name: name, prefix=True)
            self._compiled = (re.compile(body), re.compile(prefix + _END))
        return self._compiled

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


class Renamer:
    """An ordered rename map: the first pattern that matches rewrites the key.

    A template pattern matches a dotted prefix of the key; the rest of the key is
    appended to the filled replacement (an empty replacement strips the prefix).
    A ``re:`` pattern rewrites with ``re.sub(..., count=1)``, so ``\\1`` works.
    """

    def __init__(self, mapping: Sequence[tuple[str, str]]):
        # (index, True, regex, replacement text) for a re: entry; (index, False, the
        # pattern's prefix regex's match, the replacement's format) for a template entry
        self._entries: list[tuple[int, bool, Any, Any]] = []
        for index, (pattern, replacement) in enumerate(mapping):
            if pattern.startswith("re:"):
                self._entries.append((index, True, _compile_user_regex(pattern), replacement))
                continue
            source, target = Template(pattern), Template(replacement)
            prefix = source._regexes()[1]  # fails now on arithmetic in the pattern, not on the first key
            target._check_fillable()
            for brace in target._braces:
                if brace.name and brace.name not in source.variables:
                    raise _unbound(brace.text, source.variables)
            self._entries.append((index, False, prefix.match, target.format))

    def rename(self, key: str) -> tuple[str, int | None]:
        """The new key and the index of the entry used; ``(key, None)`` if none matched.

        A template entry is ``Template.match_prefix`` inlined, its regex's ``match`` and
        its replacement's ``format`` bound ahead: this runs once per key."""
        dotted = "." + key
        for index, is_regex, pattern, replacement in self._entries:
            if is_regex:
                if pattern.search(key) is None:
                    continue
                try:
                    return pattern.sub(replacement, key, count=1), index
                except (re.error, IndexError) as err:  # IndexError: unknown \g<name>
                    raise PatternError(f"'{replacement}': invalid replacement for "
                                       f"'{pattern.pattern}': {err}") from None
            found = pattern(dotted)
            if found is None:
                continue
            head, suffix = replacement(found.groupdict()), dotted[found.end():]
            return (head + suffix if head else suffix[1:]), index
        return key, None


def _parse(text: str) -> tuple[Segment, ...]:
    """Split a pattern into segments of literal runs, stars and braces."""
    segments: list[Segment] = []
    parts: list[Part] = []
    literal = ""
    at = 0
    while at < len(text):
        char = text[at]
        if char == "{":
            end = text.find("}", at)
            if end < 0:
                raise PatternError(f"'{_short(text[at:])}'" + _SYNTAX)
            parts.extend([literal] if literal else [])
            parts.append(_parse_brace(text[at:end + 1]))
            literal, at = "", end + 1
            continue
        if char == "}":
            raise PatternError("'}'" + _SYNTAX)
        if char in ".*":
            parts.extend([literal] if literal else [])
            literal = ""
            if char == ".":
                segments.append(tuple(parts))
                parts = []
            else:
                parts.append(_STAR)
        else:
            literal += char
        at += 1
    parts.extend([literal] if literal else [])
    segments.append(tuple(parts))
    return tuple(_GLOBSTAR if seg == (_STAR, _STAR) else seg for seg in segments)


def _parse_brace(text: str) -> _Brace:
    inner = text[1:-1]
    if m := _VAR.fullmatch(inner):
        return _Brace(text, name=m[1])
    if m := _ARITH.fullmatch(inner):
        operand = _integer(m[3], text)
        if m[2] == "//" and operand == 0:
            raise PatternError(f"'{text}': division by zero")
        return _Brace(text, name=m[1], op=m[2], operand=operand)
    if m := _RANGE.fullmatch(inner):
        return _range(text, _integer(m[1], text), _integer(m[2], text), m[3])
    if "," in inner:
        items = [item.strip() for item in inner.split(",")]
        if all(_ITEM.fullmatch(item) for item in items):
            _check_size(text, len(items), MAX_LISTED, "a list")
            values = tuple(items)  # repeats kept: a folded source key's brace follows another value for value
            return _Brace(text, choices=values, regex=_alternatives(tuple(dict.fromkeys(values))))
    raise PatternError(f"'{_short(text)}'" + _SYNTAX)


def brace_values(content: str) -> list[str] | None:
    """The values of a set written ``{content}``, in order (a range in its own order);
    None if it is not a set (a variable, arithmetic). Raises ``PatternError`` if malformed."""
    brace = _parse_brace("{" + content + "}")
    return list(brace.choices) if not brace.name else None


def _integer(digits: str, text: str) -> int:
    if len(digits) > MAX_DIGITS:
        raise PatternError(f"'{_short(text)}': integers have at most {MAX_DIGITS} digits")
    return int(digits)


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:28] + "..." + text[-28:]


def _check_size(text: str, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise PatternError(f"'{_short(text)}': {what} stands for at most {limit:,} values (this one for {count:,})")


def _range(text: str, start: int, stop: int, step_text: str | None) -> _Brace:
    """``{start..stop}`` or ``{start..stop..step}``: bash's ranges, counting down when stop < start."""
    step = 1 if step_text is None else _integer(step_text, text)
    if step == 0:
        raise PatternError(f"'{text}': the step of a range is at least 1")
    low, high = min(start, stop), max(start, stop)
    if step == 1:
        _check_size(text, high - low + 1, MAX_VALUES, "a range")
    else:
        _check_size(text, (high - low) // step + 1, MAX_LISTED, "a stepped range")
    values = _Numbers(range(start, stop + 1, step) if stop >= start else range(start, stop - 1, -step))
    regex = _integer_range(low, high) if step == 1 else _alternatives(values)
    return _Brace(text, choices=values, regex=regex)


class _Numbers(Sequence[str]):
    """A range's values as text, made when asked: ``{0..999999}`` is not a million strings."""

    def __init__(self, numbers: range):
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i):  # an int: Sequence's iteration and membership use only those
        return str(self.numbers[i])

    def __eq__(self, other) -> bool:
        return isinstance(other, _Numbers) and self.numbers == other.numbers

    def __hash__(self) -> int:
        return hash(self.numbers)


def _alternatives(values: Sequence[str]) -> str:
    return "(?:" + "|".join(map(re.escape, values)) + ")"


def _integer_range(low: int, high: int) -> str:
    """A regex for the integers ``low..high`` written without leading zeros, of a size
    that grows with their digits, not their count: ``{0..99999}`` is not 100,000
    alternatives (those take 12 s to compile and 2 ms per key to match)."""
    alternatives = []
    for length in range(len(str(low)), len(str(high)) + 1):  # numbers of one length at a time
        lo = max(low, 10 ** (length - 1) if length > 1 else 0)
        hi = min(high, 10**length - 1)
        alternatives.append(_same_length(str(lo), str(hi)))
    return "(?:" + "|".join(alternatives) + ")"


def _same_length(lo: str, hi: str) -> str:
    """A regex for the digit strings from ``lo`` to ``hi``, both of one length."""
    if lo == hi:
        return lo
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:  # every tail: one class per digit
        return f"[{lo[0]}-{hi[0]}]" + ("[0-9]" + (f"{{{rest}}}" if rest > 1 else "") if rest else "")
    if lo[0] == hi[0]:
        return lo[0] + _same_length(lo[1:], hi[1:])
    parts = [lo[0] + _same_length(lo[1:], "9" * rest)]
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + "[0-9]" + (f"{{{rest}}}" if rest > 1 else ""))
    parts.append(hi[0] + _same_length("0" * rest, hi[1:]))
    return "(?:" + "|".join(parts) + ")"


def _segments_regex(segments: Sequence[Segment], group: Callable[[str], str], *, prefix: bool = False) -> str:
    """The regex for ``"." + key``; ``group`` names capture groups (unique per alternative).
    ``prefix``: the caller matches a dotted prefix of the key (a boundary follows).

    Globs match in time linear in the key, not polynomial (``*attn*attn*proj*`` against
    a 16,000-character key took 131 s): within a segment of literals and stars, each
    literal before the last star is found leftmost and kept (an atomic group), which is
    a match iff any is; after a ``**``, the segments up to the next ``**`` are found the
    same way, leftmost, when they bind no variable (later text only needs them to end
    as early as possible). Other parts backtrack as regexes do."""
    blocks: list[list[Segment]] = [[]]  # runs of segments between globstars
    for seg in segments:
        if seg != _GLOBSTAR:
            blocks[-1].append(seg)
        elif blocks[-1] or len(blocks) == 1:  # "**.**" is one "**"
            blocks.append([])
    out: list[str] = []
    bound: set[str] = set()
    for n, block in enumerate(blocks):
        body = "".join(_segment_regex(seg, group, bound) for seg in block)
        if n == 0:
            out.append(body)
        elif block and (n + 1 < len(blocks) or prefix) and not _binds(block):
            out.append(r"(?>(?:\.[^.\n]+)*?" + body + _BOUNDARY + ")")
        else:
            out.append(r"(?:\.[^.\n]+)*" + body)
    return "".join(out)


def _binds(block: Sequence[Segment]) -> bool:
    return any(isinstance(part, _Brace) and part.name for seg in block for part in seg)


def _segment_regex(seg: Segment, group: Callable[[str], str], bound: set[str]) -> str:
    if _STAR in seg and all(isinstance(part, str) for part in seg):
        return r"\." + _glob_regex(seg)
    out = [r"\."]
    for i, part in enumerate(seg):
        if part == _STAR:
            if i == 0 or seg[i - 1] != _STAR:  # a run of stars is one star
                out.append(r"[^.\n]*")
        elif isinstance(part, str):
            out.append(re.escape(part))
        elif part.choices:
            out.append(part.regex)
        elif part.op:
            raise PatternError(f"'{part.text}': arithmetic is only allowed in replacements")
        elif part.name in bound:
            out.append(f"(?P={group(part.name)})")
        else:
            bound.add(part.name)
            out.append(f"(?P<{group(part.name)}>[^.\\n]+)")
    return "".join(out)


def _glob_regex(seg: Segment) -> str:
    """One segment of literals and stars: ``a*b*c`` is ``a``, then ``b`` found leftmost
    and kept, then the rest of the segment ending in ``c``."""
    literals = [""]
    for part in seg:
        if part == _STAR:
            literals.append("")
        else:
            literals[-1] += part
    first, *middle, last = [re.escape(text) for text in literals]  # there is a star: two or more
    out = [first]
    out += [r"(?>[^.\n]*?" + text + ")" for text in middle if text]
    out.append(r"[^.\n]*" + last)
    return "".join(out)


def _fill(part: Part, bindings: Mapping[str, str]) -> str:
    if isinstance(part, str):
        if part == _STAR:
            raise _not_fillable("*")
        return part
    if part.choices:
        raise _not_fillable(part.text)
    if part.name not in bindings:
        raise _unbound(part.text, bindings)
    value = bindings[part.name]
    if not part.op:
        return value
    if not re.fullmatch(r"-?\d+", value):
        raise PatternError(f"{part.text} needs an integer but {part.name}='{_short(value)}'")
    if len(value.lstrip("-")) > MAX_DIGITS:
        raise PatternError(f"{part.text} needs an integer of at most {MAX_DIGITS} digits but "
                           f"{part.name}='{_short(value)}'")
    number, n = int(value), part.operand
    if part.op == "+":  # only the operator written: {i//0} is refused at parsing, {i+0} is i
        result = number + n
    elif part.op == "-":
        result = number - n
    elif part.op == "*":
        result = number * n
    else:
        result = number // n
    if result < 0:
        raise PatternError(f"{part.text} gives {result} for {part.name}={value}: "
                           "indices must be non-negative integers")
    return str(result)


def _unbound(written: str, bound: Sequence[str] | Mapping[str, str]) -> PatternError:
    names = ", ".join(sorted(bound)) or "nothing"
    return PatternError(f"{written} is not bound (bound: {names})")


def _not_fillable(written: str) -> PatternError:
    return PatternError(f"'{written}': wildcards, ranges and sets only match keys; "
                        "a replacement can use {name} and arithmetic")


def _compile_user_regex(text: str) -> re.Pattern:
    try:
        return re.compile(text[3:])
    except re.error as err:
        raise PatternError(f"'{text}': invalid regular expression: {err}") from None


def _unique(names) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
