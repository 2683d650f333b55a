"""One key grammar: what the plan text prints (``keys.folding``), a recipe pattern accepts
and matches exactly; bounds on what a pattern may stand for; globs in linear time."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchgraft.keys.folding import expand, expand_line, fold, merge_leaves
from torchgraft.keys.patterns import (
    MAX_DIGITS,
    KeyIndex,
    KeyPattern,
    PatternError,
    Template,
    brace_values,
    select_keys,
)


@pytest.mark.parametrize("pattern, key, expected", [
    ("blocks.{0..10..2}.norm1.weight", "blocks.4.norm1.weight", True),
    ("blocks.{0..10..2}.norm1.weight", "blocks.10.norm1.weight", True),
    ("blocks.{0..10..2}.norm1.weight", "blocks.3.norm1.weight", False),
    ("blocks.{0..10..2}.norm1.weight", "blocks.12.norm1.weight", False),
    ("blocks.{1..11..2}", "blocks.11.w", True),
    ("blocks.{0..10..3}", "blocks.9.w", True),  # bash: 0 3 6 9
    ("blocks.{0..10..3}", "blocks.10.w", False),
    ("a.{7..3}", "a.5", True),  # counting down stands for the same keys
    ("a.{7..3}", "a.8", False),
    ("a.{10..0..5}", "a.5", True),
    ("a.{0..100}", "a.100", True),
    ("a.{0..100}", "a.101", False),
    ("a.{0..100}", "a.05", False),  # range values are written without leading zeros
    ("a.{0,3,7}", "a.7", True),
    ("a.{0,3,7}", "a.70", False),
    ("a.{01,2}", "a.01", True),  # listed values are matched as written
    ("a.{01,2}", "a.1", False),
    ("norm.{weight,bias}", "norm.bias", True),
    ("norm.{weight,bias}", "norm.weight", True),
    ("norm.{weight,bias}", "norm.weights", False),
    ("norm.{ weight, bias }", "norm.bias", True),
    ("{q,k,v}_proj", "k_proj.weight", True),
    ("{q,k,v}_proj", "o_proj.weight", False),
    ("a.{i,j}", "a.j", True),  # a comma makes a set of texts, even of names
    ("a.{i,j}", "a.x", False),
    ("a.{i}", "a.x", True),  # one bare name: a variable
])
def test_sets_match_what_they_stand_for(pattern, key, expected):
    assert KeyPattern(pattern).matches(key) is expected
    assert select_keys([key], [pattern]) == ([key] if expected else [])


def test_brace_values_are_the_folders():
    assert brace_values("0..10..2") == ["0", "2", "4", "6", "8", "10"]
    assert brace_values("3..0") == ["3", "2", "1", "0"]
    assert brace_values("weight,bias") == ["weight", "bias"]
    assert brace_values("i") is None
    assert expand_line("blocks.{0..4..2}.w ← src:layer.{4..0..2}.w") == [
        "blocks.0.w ← src:layer.4.w", "blocks.2.w ← src:layer.2.w", "blocks.4.w ← src:layer.0.w"]


@pytest.mark.parametrize("pattern, message", [
    ("{", "'{': expected {name}, {name+N}, {name-N}, {name*N}, {name//N}, {A..B}, {A..B..STEP} or {a,b,...}"),
    ("a.{weight,}", "'{weight,}': expected {name}, {name+N}, {name-N}, {name*N}, {name//N}, {A..B}, "
                    "{A..B..STEP} or {a,b,...}"),
    ("a.{0..10..0}", "'{0..10..0}': the step of a range is at least 1"),
    ("a.{i//0}", "'{i//0}': division by zero"),
    ("conv{0..100000000}", "'{0..100000000}': a range stands for at most 1,000,000 values "
                           "(this one for 100,000,001)"),
    ("conv{0..100000..3}", "'{0..100000..3}': a stepped range stands for at most 10,000 values "
                           "(this one for 33,334)"),
    ("conv{" + ",".join(map(str, range(10_001))) + "}",
     "'{0,1,2,3,4,5,6,7,8,9,10,11,1...5,9996,9997,9998,9999,10000}': a list stands for at most "
     "10,000 values (this one for 10,001)"),
    ("a.{0.." + "9" * 5000 + "}", "'{0.." + "9" * 24 + "..." + "9" * 27 + "}': integers have at most 100 digits"),
    ("a.{i+" + "1" * 4301 + "}", "'{i+" + "1" * 25 + "..." + "1" * 27 + "}': integers have at most 100 digits"),
])
def test_pattern_errors(pattern, message):
    with pytest.raises(PatternError) as err:
        KeyPattern(pattern)
    assert str(err.value) == message


@pytest.mark.parametrize("text, value", [("x.{i+0}", "x.7"), ("x.{i-0}", "x.7"), ("x.{i*1}", "x.7"),
                                         ("x.{i//1}", "x.7"), ("x.{i*0}", "x.0"), ("x.{i-7}", "x.0"),
                                         ("x.{i//2}", "x.3"), ("x.{i+10}", "x.17")])
def test_arithmetic_evaluates_the_operator_written(text, value):
    assert Template(text).format({"i": "7"}) == value


def test_arithmetic_on_a_huge_key_segment_is_a_pattern_error():
    with pytest.raises(PatternError) as err:
        Template("x.{i+1}").format({"i": "9" * 5000})
    assert str(err.value) == ("{i+1} needs an integer of at most 100 digits but "
                              "i='9999999999999999999999999999...9999999999999999999999999999'")
    assert Template("x.{i+1}").format({"i": "9" * MAX_DIGITS}) == "x.1" + "0" * MAX_DIGITS


def test_key_index_names_the_bad_pattern():
    with pytest.raises(PatternError) as err:
        KeyIndex(["a"]).matches(["a", "b", "re:("])
    assert err.value.position == 2


# -- globs in linear time -------------------------------------------------------------------


@pytest.mark.parametrize("pattern, key, expected", [
    ("*attn*attn*proj*", "attn" * 4000, False),  # 131 s before: nested backtracking
    ("*attn*attn*proj*", "attn" * 4000 + "proj", True),
    ("a*attn*attn*proj", "a" + "attn" * 4000 + ".proj", False),
    ("**.a.**.a.**.b", ".".join(["a"] * 5000), False),
    ("**.a.**.a.**.b", ".".join(["a"] * 5000) + ".b", True),
    ("**.a*a*a*.**.a*a*b", ".".join(["aaa"] * 3000), False),
])
def test_globs_on_long_keys(pattern, key, expected):
    """A generous bound (no machine is this slow for linear matching; before, minutes)."""
    start = time.process_time()
    assert KeyPattern(pattern).matches(key) is expected
    assert select_keys([key, "x"], [pattern]) == ([key] if expected else [])
    assert (Template(pattern).match(key) is not None) is (expected and KeyPattern(pattern + ".**").matches(key)
                                                          and Template(pattern).match(key) is not None)
    assert time.process_time() - start < 5


def _glob(pattern: str) -> re.Pattern:
    """The reference: a regex written plainly (backtracking, fine on short keys)."""
    out = []
    for seg in pattern.split("."):
        out.append(r"(?:\.[^.]+)*" if seg == "**" else r"\." + "".join(
            "[^.]*" if c == "*" else re.escape(c) for c in seg))
    return re.compile("".join(out) + r"(?=\.|\Z)")


glob_segments = st.sampled_from(["a", "b", "ab", "*", "a*", "*a", "*a*b*", "a*b", "**", "*b*", "ba*a"])
key_segments = st.sampled_from(["a", "b", "ab", "ba", "aab", "bab", "abab", "aba", "x"])


@given(st.lists(glob_segments, min_size=1, max_size=5).map(".".join),
       st.lists(key_segments, min_size=1, max_size=7).map(".".join))
def test_linear_globs_agree_with_backtracking_ones(pattern, key):
    assert KeyPattern(pattern).matches(key) == bool(_glob(pattern).match("." + key))
    full = _glob(pattern).pattern[: -len(r"(?=\.|\Z)")]
    assert (Template(pattern).match(key) is not None) == bool(re.fullmatch(full, "." + key))


# -- ranges compile to a few classes per digit -----------------------------------------------


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.lists(st.integers(0, 2 * 10**6), max_size=30))
def test_ranges_match_their_integers(a, b, numbers):
    low, high = min(a, b), max(a, b)
    if high - low >= 1_000_000:
        return
    pattern = KeyPattern(f"x.{{{a}..{b}}}")
    for n in numbers + [low, high, low - 1, high + 1]:
        assert pattern.matches(f"x.{n}") is (low <= n <= high)
    assert not pattern.matches(f"x.0{low}")


# -- what fold prints, KeyPattern matches -------------------------------------------------------

names = st.sampled_from(["weight", "bias", "q", "k", "norm", "layers", "blocks", "attn", "w1"])
numbers = st.integers(0, 12).map(str)


@st.composite
def key_trees(draw):
    """Tensor keys of a module tree: no key is a module (a dotted prefix) of another."""
    keys: set[str] = set()

    def grow(prefix: str, depth: int) -> None:
        children = draw(st.lists(st.one_of(names, numbers), min_size=1, max_size=4, unique=True))
        for child in children:
            key = f"{prefix}.{child}" if prefix else child
            if depth >= 3 or draw(st.booleans()):
                keys.add(key)
            else:
                grow(key, depth + 1)

    grow("", 0)
    return sorted(keys)


def folded_lines(keys: list[str]) -> list[str]:
    """Keys folded as the plan text folds them: repeated layers, then sibling leaves."""
    groups = merge_leaves(fold(keys, lambda k: (k,), lambda k: None), lambda a, b: True)
    return [group.patterns[0] for group in groups]


@settings(deadline=None)
@given(key_trees(), st.data())
def test_plan_text_lines_are_patterns_of_their_keys(source, data):
    keys = data.draw(st.lists(st.sampled_from(source), min_size=1, unique=True).map(sorted))
    index = KeyIndex(source)
    lines = folded_lines(keys)
    for line in lines:
        stands_for = sorted(k[0] for k in expand([line]))
        assert [k for k in source if KeyPattern(line).matches(k)] == stands_for
        assert sorted(index.keys_at(index.matches([line]))) == stands_for
    assert index.keys_at(index.matches(lines)) == keys


def test_folded_lines_with_steps_and_sets():
    keys = [f"blocks.{i}.norm1.{leaf}" for i in range(0, 11, 2) for leaf in ("weight", "bias")]
    source = keys + [f"blocks.{i}.norm1.{leaf}" for i in range(1, 11, 2) for leaf in ("weight", "bias")]
    lines = folded_lines(keys)
    assert lines == ["blocks.{0..10..2}.norm1.{weight,bias}"]
    assert select_keys(source, lines) == keys
    assert select_keys(source, ["blocks.{0,2,4}.norm1.{weight,bias}"]) == keys[:6]
