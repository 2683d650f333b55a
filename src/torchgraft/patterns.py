"""Key patterns (select, exclude, keep), templates (rename, to, from) and renames.

Keys are dotted names; a pattern is parsed into segments and compiled to one
regex matched against ``"." + key``. The leading dot lets every segment compile to
``\\.SEGMENT`` and ``**`` to ``(?:\\.[^.]+)*``, so "zero or more segments" needs no
special case at either end. Character classes also exclude newlines, so that
``matching_counts`` can scan all keys joined by newlines in one regex pass.
Regions (``[...]``) are split off before a text gets here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union


class PatternError(ValueError):
    """A malformed pattern or template, or a template that cannot be filled."""


@dataclass(frozen=True)
class _Brace:
    """One ``{...}`` of a pattern: a variable, arithmetic on one, or a numeric choice."""

    text: str  # as written, braces included, for error messages
    name: str = ""  # variable name ("" for a choice)
    op: str = ""  # "" for a plain variable; else one of + - * //
    operand: int = 0
    choices: tuple[str, ...] = ()  # a range or set, as decimal strings


_STAR = "*"
_GLOBSTAR = ("**",)  # a whole segment that is "**"
Part = Union[str, _Brace]  # a literal run, _STAR, or a brace
Segment = tuple[Part, ...]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VAR = re.compile(rf"\s*({_NAME})\s*")
_ARITH = re.compile(rf"\s*({_NAME})\s*(\+|-|\*|//)\s*(\d+)\s*")
_RANGE = re.compile(r"\s*(\d+)\s*\.\.\s*(\d+)\s*")
_SET = re.compile(r"\s*\d+\s*(?:,\s*\d+\s*)+")
_SYNTAX = ": expected {name}, {name+N}, {name-N}, {name*N}, {name//N}, {A..B} or {A,B,...}"
_END = r"(?=\.|\Z)"  # a match ends at a segment boundary


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
            segments = _parse(text)
            self._body = _segments_regex(segments, lambda name: name)
            dotted = re.compile(self._body + _END).match
            self._match = lambda key: dotted("." + key)

    def matches(self, key: str) -> bool:
        return self._match(key) is not None

    def __repr__(self) -> str:
        return f"KeyPattern({self.text!r})"


def select_keys(keys: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Keys matched by any pattern, in the order of ``keys``.

    All non-regex patterns are compiled into one alternation, which scans all keys
    at once (see ``matching_counts``): 50 rules over 100k keys are 50 regex scans,
    not 5 million regex calls from Python.
    """
    compiled = [KeyPattern(p) for p in patterns]  # validates every pattern, also unused ones
    searches = [p._match for p in compiled if p.text.startswith("re:")]
    plain = [p.text for p in compiled if not p.text.startswith("re:")]
    if not plain:
        return [key for key in keys if any(search(key) for search in searches)]
    body = "|".join(_segments_regex(_parse(text), _group_namer(n)) for n, text in enumerate(plain))
    lines = _lines(tuple(keys))
    if lines is None:  # a key with a newline in it: match key by key
        combined = re.compile(f"(?:{body}){_END}").match
        chosen = {i for i, key in enumerate(keys) if combined("." + key)}
    else:
        text, starts = lines
        chosen = {starts[m.start()] for m in re.compile(rf"\n(?:{body})(?=[.\n]|\Z)").finditer(text)}
    if not searches:
        return [keys[i] for i in sorted(chosen)]
    return [key for i, key in enumerate(keys) if i in chosen or any(search(key) for search in searches)]


@functools.lru_cache(maxsize=2)  # the last sources planned: a few MB per 100k keys
def _lines(keys: tuple[str, ...]) -> tuple[str, dict[int, int]] | None:
    """``"\\n." + key`` for every key, joined, and where each key's line starts; None if
    a key holds a newline. Cached: a source's keys are scanned once per rule."""
    if any("\n" in key for key in keys):
        return None
    starts, at = {}, 0
    for i, key in enumerate(keys):
        starts[at] = i
        at += len(key) + 2
    return "".join("\n." + key for key in keys), starts


def matching_counts(keys: Sequence[str], patterns: Sequence[str]) -> list[int]:
    """How many keys each pattern matches, so callers can report one that matches nothing.

    Each non-regex pattern scans one newline-joined string of all keys: the per-key
    work stays inside the regex engine, which also skips quickly to a literal lead.
    """
    compiled = [KeyPattern(p) for p in patterns]
    lines = _lines(tuple(keys))
    text = lines[0] if lines is not None else "".join("\n." + key for key in keys)
    counts = []
    for pattern in compiled:
        if pattern.text.startswith("re:"):
            counts.append(sum(1 for key in keys if pattern.matches(key)))
        else:
            scan = re.compile(r"\n" + pattern._body + r"(?=[.\n]|\Z)")
            counts.append(sum(1 for _ in scan.finditer(text)))
    return counts


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
        return None if found is None else self._bindings(found)

    def match_prefix(self, key: str) -> tuple[dict[str, str], str] | None:
        """Bindings and the rest of the key ("" or ".rest") if the template matches a dotted prefix."""
        dotted = "." + key
        found = self._regexes()[1].match(dotted)
        return None if found is None else (self._bindings(found), dotted[found.end():])

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
        if self._compiled is None:
            body = _segments_regex(self._segments, lambda name: name)
            self._compiled = (re.compile(body), re.compile(body + _END))
        return self._compiled

    def _bindings(self, found: re.Match) -> dict[str, str]:
        return {name: found.group(name) for name in self.variables}

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


class Renamer:
    """An ordered rename map: the first pattern that matches rewrites the key.

    A template pattern matches a dotted prefix of the key; the rest of the key is
    appended to the filled replacement (an empty replacement strips the prefix).
    A ``re:`` pattern rewrites with ``re.sub(..., count=1)``, so ``\\1`` works.
    """

    def __init__(self, mapping: Sequence[tuple[str, str]]):
        self._entries: list[tuple[str, object, object]] = []
        for pattern, replacement in mapping:
            if pattern.startswith("re:"):
                self._entries.append(("re", _compile_user_regex(pattern), replacement))
                continue
            source, target = Template(pattern), Template(replacement)
            source._regexes()  # fail now on arithmetic in the pattern, not on the first key
            target._check_fillable()
            for brace in target._braces:
                if brace.name and brace.name not in source.variables:
                    raise _unbound(brace.text, source.variables)
            self._entries.append(("template", source, target))

    def rename(self, key: str) -> tuple[str, int | None]:
        """The new key and the index of the entry used; ``(key, None)`` if none matched."""
        for index, (kind, pattern, replacement) in enumerate(self._entries):
            if kind == "re":
                if pattern.search(key) is None:
                    continue
                try:
                    return pattern.sub(replacement, key, count=1), index
                except (re.error, IndexError) as err:  # IndexError: unknown \g<name>
                    raise PatternError(f"'{replacement}': invalid replacement for "
                                       f"'{pattern.pattern}': {err}") from None
            found = pattern.match_prefix(key)
            if found is None:
                continue
            bindings, suffix = found
            head = replacement.format(bindings)
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
                raise PatternError(f"'{text[at:]}'" + _SYNTAX)
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
        if m[2] == "//" and int(m[3]) == 0:
            raise PatternError(f"'{text}': division by zero")
        return _Brace(text, name=m[1], op=m[2], operand=int(m[3]))
    if m := _RANGE.fullmatch(inner):
        low, high = int(m[1]), int(m[2])
        if low > high:
            raise PatternError(f"'{text}': empty range")
        return _Brace(text, choices=tuple(str(n) for n in range(low, high + 1)))
    if _SET.fullmatch(inner):
        numbers = [str(int(n)) for n in inner.split(",")]
        return _Brace(text, choices=tuple(dict.fromkeys(numbers)))
    raise PatternError(f"'{text}'" + _SYNTAX)


def _segments_regex(segments: Sequence[Segment], group: Callable[[str], str]) -> str:
    """The regex for ``"." + key``; ``group`` names capture groups (unique per alternative)."""
    out: list[str] = []
    bound: set[str] = set()
    for seg in segments:
        if seg == _GLOBSTAR:
            out.append(r"(?:\.[^.\n]+)*")
            continue
        out.append(r"\.")
        for i, part in enumerate(seg):
            if part == _STAR:
                if i == 0 or seg[i - 1] != _STAR:  # a run of stars is one star
                    out.append(r"[^.\n]*")
            elif isinstance(part, str):
                out.append(re.escape(part))
            elif part.choices:
                out.append("(?:" + "|".join(part.choices) + ")")
            elif part.op:
                raise PatternError(f"'{part.text}': arithmetic is only allowed in replacements")
            elif part.name in bound:
                out.append(f"(?P={group(part.name)})")
            else:
                bound.add(part.name)
                out.append(f"(?P<{group(part.name)}>[^.\\n]+)")
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
        raise PatternError(f"{part.text} needs an integer but {part.name}='{value}'")
    number, n = int(value), part.operand
    result = {"+": number + n, "-": number - n, "*": number * n, "//": number // n}[part.op]
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


def _group_namer(n: int) -> Callable[[str], str]:
    """Group names for alternative ``n`` of a combined regex, which must not collide."""
    return lambda name: f"p{n}_{name}"


def _unique(names) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
