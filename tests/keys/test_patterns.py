import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchgraft.keys.patterns import (
    KeyIndex,
    KeyPattern,
    PatternError,
    Renamer,
    Template,
    matching_counts,
    select_keys,
)

SYNTAX = "expected {name}, {name+N}, {name-N}, {name*N}, {name//N}, {A..B}, {A..B..STEP} or {a,b,...}"


# --- KeyPattern --------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, key, expected", [
    ("conv1", "conv1", True),
    ("conv1", "conv1.weight", True),
    ("conv1", "conv1.bn.bias", True),
    ("conv1", "conv10.weight", False),
    ("conv1", "net.conv1.weight", False),
    ("conv1.weight", "conv1.weight", True),
    ("encoder.layer.*", "encoder.layer.3.attention.self.query.weight", True),
    ("encoder.layer.*", "encoder.layers.3.weight", False),
    ("*conv*", "myconv2.weight", True),
    ("*conv*", "net.conv.weight", False),
    ("layer*.weight", "layer1.weight", True),
    ("layer*.weight", "layer1.0.weight", False),
    ("**.num_batches_tracked", "num_batches_tracked", True),
    ("**.num_batches_tracked", "bn.num_batches_tracked", True),
    ("**.num_batches_tracked", "a.b.bn.num_batches_tracked", True),
    ("**.num_batches_tracked", "bn.num_batches_tracked_x", False),
    ("a.**.b", "a.b", True),
    ("a.**.b", "a.x.y.b", True),
    ("a.**.b", "a.xb", False),
    ("a.**", "a", True),
    ("a.**", "a.x.y", True),
    ("**", "anything.at.all", True),
    ("layer.{0..5}", "layer.0.w", True),
    ("layer.{0..5}", "layer.5.w", True),
    ("layer.{0..5}", "layer.6.w", False),
    ("layer.{0..5}", "layer.05.w", False),
    ("layer.{8..12}", "layer.10", True),
    ("layer.{0,2,4}", "layer.2.w", True),
    ("layer.{0,2,4}", "layer.3.w", False),
    ("h{0..2}.w", "h1.w", True),
    ("a.{i}.b.{i}", "a.3.b.3.w", True),
    ("a.{i}.b.{i}", "a.3.b.4", False),
    ("a.{i}", "a.x", True),
    ("a+b(c)", "a+b(c).w", True),
    ("a+b(c)", "aab(c).w", False),
    (r"re:^enc.*\.bias$", "enc.x.bias", True),
    (r"re:\.bias$", "enc.x.bias", True),
    (r"re:^bias", "enc.x.bias", False),
])
def test_key_pattern(pattern, key, expected):
    assert KeyPattern(pattern).matches(key) is expected


@pytest.mark.parametrize("pattern, message", [
    ("{i*2}.x", "'{i*2}': arithmetic is only allowed in replacements"),
    ("a.{i**2}", f"'{{i**2}}': {SYNTAX}"),
    ("a.{}", f"'{{}}': {SYNTAX}"),
    ("a.{3}", f"'{{3}}': {SYNTAX}"),
    ("a.{1-x}", f"'{{1-x}}': {SYNTAX}"),
    ("a.{i", f"'{{i': {SYNTAX}"),
    ("a.i}", f"'}}': {SYNTAX}"),
    ("a.{0..10..0}", "'{0..10..0}': the step of a range is at least 1"),
    ("a.{i//0}", "'{i//0}': division by zero"),
])
def test_key_pattern_errors(pattern, message):
    with pytest.raises(PatternError) as err:
        KeyPattern(pattern)
    assert str(err.value) == message


def test_bad_regex_message():
    with pytest.raises(PatternError) as err:
        KeyPattern("re:(")
    try:
        re.compile("(")
    except re.error as expected:
        assert str(err.value) == f"'re:(': invalid regular expression: {expected}"
    assert isinstance(err.value, ValueError)


# --- select_keys / matching_counts ---------------------------------------------------------

KEYS = [
    "embeddings.word_embeddings.weight",
    "embeddings.position_ids",
    "encoder.layer.0.attention.self.query.weight",
    "encoder.layer.0.attention.self.query.bias",
    "encoder.layer.1.attention.self.query.weight",
    "encoder.layer.10.output.dense.weight",
    "pooler.dense.weight",
    "bn.num_batches_tracked",
]


def test_select_keys_keeps_key_order():
    picked = select_keys(KEYS, ["pooler", "encoder.layer.{0..1}", "embeddings"])
    assert picked == KEYS[:5] + ["pooler.dense.weight"]
    assert select_keys(KEYS, ["**.position_ids", r"re:\.bias$"]) == [
        "embeddings.position_ids", "encoder.layer.0.attention.self.query.bias"]
    assert select_keys(KEYS, []) == []
    assert select_keys(KEYS, ["nothing"]) == []


def test_select_keys_with_repeated_variable_names_across_patterns():
    # each pattern's {i} is its own variable
    keys = ["a.1.b.1", "a.1.b.2", "c.2.d.2", "c.2.d.3"]
    assert select_keys(keys, ["a.{i}.b.{i}", "c.{i}.d.{i}"]) == ["a.1.b.1", "c.2.d.2"]


def test_matching_counts():
    patterns = ["encoder", "encoder.layer.*.attention", "**.weight", "re:query", "decoder",
                "encoder.layer.1"]
    assert matching_counts(KEYS, patterns) == [4, 3, 5, 3, 0, 1]
    assert matching_counts([], ["a"]) == [0]


def test_select_and_count_validate_every_pattern():
    with pytest.raises(PatternError):
        select_keys(KEYS, ["encoder", "{i*2}"])
    with pytest.raises(PatternError):
        matching_counts(KEYS, ["re:("])


MAX_CHAR = chr(sys.maxunicode)  # the end of a run of keys by prefix has no successor text
segments = st.sampled_from(["a", "b", "ab", "1", "2", "10", "", "h1", "h10", "h2x", MAX_CHAR,
                            "a" + MAX_CHAR, "é", "a b"])
dotted_keys = st.lists(segments, min_size=1, max_size=4).map(".".join)
pattern_segments = st.sampled_from(["a", "b", "1", "*", "a*", "*b", "**", "{0..2}", "{1,10}",
                                    "{i}", "{j}", "", "h{1,10}", "h{1,2}*", "{0..99}", "h{1..12}x",
                                    MAX_CHAR, "a" + MAX_CHAR, "*" + MAX_CHAR, "{i}" + MAX_CHAR])
patterns = st.lists(pattern_segments, min_size=1, max_size=4).map(".".join)


@given(st.lists(dotted_keys, max_size=20), st.lists(patterns, max_size=5))
def test_bulk_functions_agree_with_one_pattern_at_a_time(keys, texts):
    """KeyIndex scans only the runs of sorted keys that a pattern's literal prefixes
    allow; it must find exactly what matching key by key finds."""
    compiled = [KeyPattern(t) for t in texts]
    assert select_keys(keys, texts) == [k for k in keys if any(p.matches(k) for p in compiled)]
    assert matching_counts(keys, texts) == [sum(p.matches(k) for k in keys) for p in compiled]
    index = KeyIndex(keys)  # one index, many pattern lists: as a bulk rule uses it
    for pattern, found in zip(compiled, index.matches(texts)):
        assert sorted(found) == [i for i, k in enumerate(keys) if pattern.matches(k)]


@given(st.lists(dotted_keys, max_size=20), patterns)
def test_full_matches_agree_with_template_match(keys, text):
    template = Template(text)
    expected = [(i, b) for i, k in enumerate(keys) if (b := template.match(k)) is not None]
    assert KeyIndex(keys).full_matches(template) == expected


def test_full_matches_fail_as_match_does():
    with pytest.raises(PatternError, match="arithmetic is only allowed in replacements"):
        KeyIndex(["a.1"]).full_matches(Template("a.{i+1}"))
    assert KeyIndex([]).full_matches(Template("a.{i+1}")) == []  # match is never called
    assert KeyIndex(["a.1\n", "a.2"]).full_matches(Template("a.{i}")) == [(1, {"i": "2"})]


@pytest.mark.parametrize("pattern, expected", [
    ("h{1,10}", ["h1.w", "h10.w", "h10"]),  # the runs of prefixes h1 and h10 overlap
    ("h{1,10}*", ["h1.w", "h10.w", "h11.w", "h1x.w", "h100.w", "h10"]),
    ("{0..99}.w", ["0.w", "99.w"]),  # more choices than are expanded into prefixes
    ("h{1..9}{0..9}.w", ["h10.w", "h11.w", "h99.w"]),  # 90 prefixes: expansion stops at 64
    ("a.**", ["a", "a.b.c"]),
    ("a" + MAX_CHAR, ["a" + MAX_CHAR, "a" + MAX_CHAR + ".x"]),
    (MAX_CHAR, [MAX_CHAR]),
    ("{1,11}{1,11}", ["111", "111.w", "1111", "11"]),  # 1+11 and 11+1 are one text: counted once
    ("11", ["11"]),
])
def test_key_index_prefix_runs(pattern, expected):
    keys = ["a", "a.b.c", "ab", "h1.w", "h10.w", "h11.w", "h1x.w", "h100.w", "h2", "0.w", "99.w",
            "100.w", "h10", "h99.w", "a" + MAX_CHAR, "a" + MAX_CHAR + ".x", "a" + MAX_CHAR + MAX_CHAR,
            MAX_CHAR, MAX_CHAR + MAX_CHAR, "111", "111.w", "1111", "11", "11x"]
    assert select_keys(keys, [pattern]) == [k for k in keys if k in expected]
    assert select_keys(keys, [pattern]) == [k for k in keys if KeyPattern(pattern).matches(k)]
    assert matching_counts(keys, [pattern]) == [len(expected)]


def test_key_index_with_newlines():
    """Lines cannot stand for keys that hold a newline, nor be matched by a pattern that does:
    then every key is matched on its own, as ``KeyPattern`` matches it."""
    keys = ["a", "b\n.a", "a.x"]
    assert select_keys(keys, ["a"]) == ["a", "a.x"]
    assert matching_counts(["a", "b"], ["a\n.b", "b"]) == [0, 1]
    assert select_keys(["a", "b"], ["a\n.b"]) == []


def test_key_index_keeps_duplicates_and_order():
    keys = ["b.1", "a.1", "b.1", "a.2"]
    assert select_keys(keys, ["b", "a.{1,2}"]) == keys
    assert KeyIndex(keys).counts(["b", "a.1", "c"]) == [2, 1, 0]


def test_large_inventory_runs():
    """A sanity check that 100k keys x 50 patterns takes the bulk path (no timing asserted;
    tests/benchmarks measures speed)."""
    keys = [f"encoder.layer.{i}.block.{j}.weight" for i in range(10_000) for j in range(10)]
    texts = [f"encoder.layer.{i}" for i in range(40)] + [f"encoder.layer.{{{i}..{i + 9}}}.block.3"
                                                         for i in range(9)] + ["**.block.7"]
    picked = select_keys(keys, texts)
    assert len(picked) == 400 + 10_000 - 40  # layers 0..39, and block 7 of the others
    counts = matching_counts(keys, texts)
    assert counts[:40] == [10] * 40 and counts[-1] == 10_000


# --- Template --------------------------------------------------------------------------------

def test_template_variables():
    t = Template("layers.{j*2}.{k}.{j}")
    assert t.variables == ("k", "j")
    assert t.referenced == ("j", "k")
    assert Template("a.b").variables == ()


def test_template_match():
    t = Template("blocks.{i}.ff.{i}")
    assert t.match("blocks.1.ff.1") == {"i": "1"}
    assert t.match("blocks.1.ff.2") is None
    assert t.match("blocks.1.ff.1.weight") is None  # a full match
    assert Template("encoder.layer.{i}.{name}.weight").match("encoder.layer.3.attn.weight") == {
        "i": "3", "name": "attn"}
    assert Template("conv1").match("conv1") == {}
    assert Template("conv1").match("conv1.weight") is None
    assert Template("h.{0..3}.{i}").match("h.2.w") == {"i": "w"}
    assert Template("**.bias").match("a.b.bias") == {}


def test_template_match_prefix():
    t = Template("encoder.layer.{i}.attention")
    assert t.match_prefix("encoder.layer.3.attention.self.query.weight") == (
        {"i": "3"}, ".self.query.weight")
    assert t.match_prefix("encoder.layer.3.attention") == ({"i": "3"}, "")
    assert t.match_prefix("encoder.layer.3.attentions.w") is None
    assert t.match_prefix("x.encoder.layer.3.attention") is None


def test_template_format():
    assert Template("blocks.{i}.proj").format({"i": "3"}) == "blocks.3.proj"
    assert Template("l.{i+4}.{i-2}.{i*2}.{i//2}").format({"i": "5"}) == "l.9.3.10.2"
    assert Template("l.{ i + 4 }").format({"i": "1"}) == "l.5"
    assert Template("h{i}_{name}").format({"i": "0", "name": "q"}) == "h0_q"
    assert Template("plain.key").format({}) == "plain.key"


@pytest.mark.parametrize("text, bindings, message", [
    ("a.{j}", {"i": "1", "h": "2"}, "{j} is not bound (bound: h, i)"),
    ("a.{j}", {}, "{j} is not bound (bound: nothing)"),
    ("a.{j*2}", {"i": "1"}, "{j*2} is not bound (bound: i)"),
    ("a.{i-2}", {"i": "0"}, "{i-2} gives -2 for i=0: indices must be non-negative integers"),
    ("a.{i+1}", {"i": "attn"}, "{i+1} needs an integer but i='attn'"),
    ("a.*", {}, "'*': wildcards, ranges and sets only match keys; a replacement can use {name} "
                "and arithmetic"),
    ("**.a", {}, "'**': wildcards, ranges and sets only match keys; a replacement can use {name} "
                 "and arithmetic"),
    ("a.{0..3}", {}, "'{0..3}': wildcards, ranges and sets only match keys; a replacement can use "
                     "{name} and arithmetic"),
])
def test_template_format_errors(text, bindings, message):
    with pytest.raises(PatternError) as err:
        Template(text).format(bindings)
    assert str(err.value) == message


def test_template_arithmetic_cannot_match():
    with pytest.raises(PatternError) as err:
        Template("layers.{i*2}").match("layers.4")
    assert str(err.value) == "'{i*2}': arithmetic is only allowed in replacements"
    with pytest.raises(PatternError):
        Template("layers.{i*2}").match_prefix("layers.4.w")


def test_template_rejects_regex():
    with pytest.raises(PatternError) as err:
        Template("re:a")
    assert str(err.value) == "'re:a': a regular expression cannot be used as a template; " \
                             "use {name} variables"


# --- Renamer ---------------------------------------------------------------------------------

def test_renamer_first_match_wins():
    renamer = Renamer([
        ("embeddings.word_embeddings", "tok_emb"),
        ("encoder.layer.{i}.attention.output.dense", "blocks.{i}.proj"),
        ("encoder.layer.{i}", "blocks.{i+4}"),
        (r"re:^head\.(\w+)", r"out.\1"),
        ("model", ""),
    ])
    assert renamer.rename("embeddings.word_embeddings.weight") == ("tok_emb.weight", 0)
    assert renamer.rename("encoder.layer.3.attention.output.dense.bias") == ("blocks.3.proj.bias", 1)
    assert renamer.rename("encoder.layer.3.intermediate.dense.weight") == (
        "blocks.7.intermediate.dense.weight", 2)
    assert renamer.rename("head.fc.bias") == ("out.fc.bias", 3)
    assert renamer.rename("model.conv1.weight") == ("conv1.weight", 4)
    assert renamer.rename("model") == ("", 4)
    assert renamer.rename("other.weight") == ("other.weight", None)
    assert renamer.rename("models.x") == ("models.x", None)  # prefixes end at a dot


def test_renamer_regex_uses_search_and_one_substitution():
    renamer = Renamer([(r"re:(\d+)", r"<\1>")])
    assert renamer.rename("layer.1.sub.2") == ("layer.<1>.sub.2", 0)


def reference_rename(mapping, key):
    """``Renamer.rename`` spelled with the public ``Template`` methods it inlines."""
    for index, (pattern, replacement) in enumerate(mapping):
        if pattern.startswith("re:"):
            if re.search(pattern[3:], key):
                return re.sub(pattern[3:], replacement, key, count=1), index
            continue
        found = Template(pattern).match_prefix(key)
        if found is not None:
            bindings, suffix = found
            head = Template(replacement).format(bindings)
            return (head + suffix if head else suffix[1:]), index
    return key, None


rename_patterns = st.lists(st.sampled_from(["a", "b", "1", "*", "a*", "**", "{0..2}", "{i}", "{j}",
                                            "h{i}", "{i}x"]), min_size=1, max_size=3).map(".".join)
rename_entries = st.lists(st.tuples(rename_patterns, st.sampled_from(["", "x", "y.{i}", "{i}.{j}", "z"])),
                          max_size=4)


@given(st.lists(dotted_keys, max_size=10), rename_entries)
def test_renamer_agrees_with_templates(keys, mapping):
    try:
        renamer = Renamer(mapping)
    except PatternError:
        return  # a replacement uses a name its pattern does not bind
    for key in keys:
        assert renamer.rename(key) == reference_rename(mapping, key)


def test_renamer_with_no_entries():
    assert Renamer([]).rename("a.b") == ("a.b", None)


@pytest.mark.parametrize("mapping, message", [
    ([("a.{i}", "b.{j}")], "{j} is not bound (bound: i)"),
    ([("a", "b.{j+1}")], "{j+1} is not bound (bound: nothing)"),
    ([("a.{i*2}", "b")], "'{i*2}': arithmetic is only allowed in replacements"),
    ([("a.{i}", "b.*")], "'*': wildcards, ranges and sets only match keys; a replacement can "
                         "use {name} and arithmetic"),
    ([("x", "b.*"), ("re:(", "c")], "'*': wildcards, ranges and sets only match keys; a "
                                    "replacement can use {name} and arithmetic"),
])
def test_renamer_fails_early(mapping, message):
    """Every entry is checked up front, not when the first key reaches it."""
    with pytest.raises(PatternError) as err:
        Renamer(mapping)
    assert str(err.value) == message


def test_renamer_bad_regex_replacement():
    renamer = Renamer([(r"re:a(b)", r"\3")])
    with pytest.raises(PatternError) as err:
        renamer.rename("ab")
    assert str(err.value).startswith(r"'\3': invalid replacement for 'a(b)': invalid group reference")


def test_renamer_unknown_group_name():
    renamer = Renamer([(r"re:a(b)", r"\g<x>")])
    with pytest.raises(PatternError) as err:
        renamer.rename("ab")
    assert str(err.value) == r"'\g<x>': invalid replacement for 'a(b)': unknown group name 'x'"
