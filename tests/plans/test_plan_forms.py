"""The shortcuts that make a 100k-entry plan fast to show and write agree with the
plain computations they replace: its JSON is ``json.dumps``'s (one line per entry), its counts are the
per-entry counts, its folded lines are checked as expanding them would check them."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchgraft.core.text import human_bytes
from torchgraft.keys import folding as grouping
from torchgraft.keys.folding import fold
from torchgraft.plans import _json_fast as json_forms
from torchgraft.plans.forms import Forms
from torchgraft.plans.markdown import render_markdown
from torchgraft.plans.text import nbytes, read_nbytes, render, source_stats, summary
from torchgraft.plans.types import (
    Entry,
    Layout,
    Piece,
    Plan,
    Read,
    Skipped,
    SourceRef,
    TargetRef,
    Unused,
    entry_form,
    entry_keys,
    entry_parts,
)

FINGERPRINT = {"size": 1000, "mtime_ns": 1, "header_sha256": "0" * 64}
TRANSFORMS = [(), ("transpose",), ({"scale": 0.5},), ({"cast": "float16"},), ({"scale": "\x000\x00"},), ({"scale": "9%s"},)]
LEAVES = ["weight", "bias", "w1", "007", "0", "%s", "{0}", "é←", 'q"x', "a\\b", "\x001\x00"]


def random_plan(seed: int, n: int) -> Plan:
    """Entries of every kind (kept, partial, merged, transformed, two sources), keys
    with integers to fold and strings that look like placeholders."""
    rng = random.Random(seed)
    entries, unused, seen = [], [], set()
    while len(entries) < n:
        i, e, leaf = rng.randrange(12), rng.randrange(8), rng.choice(LEAVES)
        key = rng.choice([f"layers.{i}.moe.{e}.{leaf}", f"blocks.{i}.{leaf}", f"{i}.{e}", f"h.{2 * i}.x.{e}.{leaf}"])
        if key in seen:
            continue
        seen.add(key)
        shape, dtype = rng.choice([(4, 4), (8,), ()]), rng.choice(["float32", "float16"])
        source_key, source = f"enc.{i}.{e}.{leaf}", rng.choice(["a", "b"])
        kind = rng.randrange(6)
        if kind == 0:
            entries.append(Entry(key, shape, dtype, (), (), rng.choice(["parameter", None])))
        elif kind == 1 and shape:
            merge = rng.choice(["mean", {"weights": [0.25, 0.75]}])
            reads = (Read("a", source_key, shape, "float32"), Read("b", source_key + ".ema", shape, "float32"))
            entries.append(Entry(key, shape, dtype, (Piece(reads, "rules[2]", None, (), merge),), (), "buffer"))
        elif kind == 2 and shape:
            head = Piece((Read(source, source_key, shape, dtype, "[:1]"),), "rules[3]", "[:1]")
            entries.append(Entry(key, shape, dtype, (head,), ("[1:]",), "parameter"))
        else:
            piece = Piece((Read(source, source_key, shape, dtype),), f"rules[{rng.randrange(2)}]", None, rng.choice(TRANSFORMS))
            entries.append(Entry(key, shape, dtype, (piece,), (), "parameter"))
        if rng.random() < 0.3:
            unused.append(Unused(rng.choice(["a", "b"]), f"u.{len(entries)}.{leaf}", shape, dtype))
    sources = (SourceRef("a", "a.safetensors", "safetensors", None, FINGERPRINT),
               SourceRef("b", "b.pt", "torch", "ema", {**FINGERPRINT, "content_sha256": "1" * 64}))
    layout = Layout(1000) if seed % 2 else Layout()
    skipped = (Skipped("z.weight", "rules[1]", "shape [3] vs [4]"),) if seed % 3 == 0 else ()
    return Plan(tuple(entries), tuple(unused), skipped, sources, TargetRef(None, seed, "2" * 64), {"r": "%s\x000\x00"}, "0.1.0", layout)


PLANS = [random_plan(seed, n) for seed, n in [(0, 3), (1, 40), (2, 300), (3, 1200)]]


def one_item_per_line(document: dict, lists: tuple[str, ...]) -> str:
    """The plan file's layout, plainly: ``json.dumps(indent=1)``, but each item of the
    long lists on one compact line."""
    compact = {name: [json_forms.dumps(item) for item in document[name]] for name in lists}
    marked = {**document, **{name: [f"\x00{name}{i}\x00" for i in range(len(items))] for name, items in compact.items()}}
    text = json.dumps(marked, indent=1, sort_keys=True, ensure_ascii=False)
    for name, items in compact.items():
        for i, item in enumerate(items):
            text = text.replace(json.dumps(f"\x00{name}{i}\x00"), item, 1)
    return text


@pytest.mark.parametrize("plan", PLANS)
def test_plan_json_is_what_json_dumps_writes(plan):
    full = plan.to_dict()
    text = plan.to_json()
    assert text == one_item_per_line(full, ("entries", "unused")) + "\n"
    assert json.loads(text) == full
    assert len(text.splitlines()) == len(json.dumps(full, indent=1).splitlines()) - sum(
        len(json.dumps(item, indent=1).splitlines()) - 1 for name in ("entries", "unused") for item in full[name])
    body = {k: v for k, v in full.items() if k != "sha256"}
    compact = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert plan.sha256 == hashlib.sha256(compact.encode()).hexdigest()


def test_a_form_whose_strings_look_like_placeholders_is_dumped_item_by_item():
    items = [("k0", "\x000\x00"), ("k1", "\x000\x00"), ("k2", "%s")]
    forms = Forms.of(items, lambda item: ((item[0],), item[1]))
    similar = json_forms.Similar(items, forms, lambda item, keys: {"key": keys[0], "note": item[1]})
    text, samples = json_forms.document({"items": similar}, indent=1)
    expected = [{"key": key, "note": note} for key, note in items]
    assert text == one_item_per_line({"items": expected}, ("items",))
    assert samples == {"items": [expected[0], expected[2]]}


def test_a_form_whose_keys_are_written_out_of_order_is_dumped_item_by_item():
    items = [("k0", "z0"), ("k1", "z1")]
    forms = Forms.of(items, lambda item: (item, ()))
    similar = json_forms.Similar(items, forms, lambda item, keys: {"b": keys[0], "a": keys[1]})
    expected = {"items": [{"b": k, "a": z} for k, z in items], "n": 1}
    assert json_forms.document({"items": similar, "n": 1})[0] == json_forms.dumps(expected)
    assert json_forms.document({"items": similar, "n": 1}, indent=1)[0] == one_item_per_line(expected, ("items",))


def test_forms_number_equal_objects_alike_in_order_of_first_occurrence():
    forms = Forms.of(["a1", "b1", "a2", "c1", "b2"], lambda item: ((item,), item[0]))
    assert forms.numbers == [0, 1, 0, 2, 1] and forms.firsts == [0, 1, 3] and forms.counts == [2, 2, 1]
    assert forms.keys == [("a1",), ("b1",), ("a2",), ("c1",), ("b2",)]


@pytest.mark.parametrize("plan", PLANS)
def test_counts_made_form_by_form_are_the_counts_entry_by_entry(plan):
    read: dict[str, dict[str, int]] = {s.name: {} for s in plan.sources}
    for entry in plan.entries:
        for r in (r for p in entry.pieces for r in p.reads):
            read[r.source][r.key] = read[r.source].get(r.key, 0) + read_nbytes(r)
    expected = {}
    for s in plan.sources:
        unused = [u for u in plan.unused if u.source == s.name]
        expected[s.name] = (len(read[s.name]), sum(read[s.name].values()), len(unused), sum(nbytes(u.shape, u.dtype) for u in unused))
    assert source_stats(plan) == expected

    size = lambda entries: human_bytes(sum(nbytes(e.shape, e.dtype) for e in entries))
    assigned, kept = [e for e in plan.entries if not e.kept], [e for e in plan.entries if e.kept]
    partial = sum(1 for e in plan.entries if e.uncovered)
    text = (f"{len(plan.entries)} target tensors ({size(plan.entries)}): {len(assigned)} assigned ({size(assigned)})"
            f"{f', {partial} of them in part' if partial else ''}, {len(kept)} kept ({size(kept)})")
    text += f", {len(plan.skipped)} skipped" if plan.skipped else ""
    unused_bytes = human_bytes(sum(nbytes(u.shape, u.dtype) for u in plan.unused))
    assert summary(plan) == text + f"; {len(plan.unused)} source tensors unused ({unused_bytes})"


def test_text_remembered_for_one_plan_is_not_shown_for_another():
    a, b = PLANS[1], PLANS[2]
    first = (render(a), render_markdown(a))
    assert render(b) != first[0] and render_markdown(b) != first[1]
    assert (render(a), render_markdown(a)) == first
    copy = Plan(a.entries, a.unused, a.skipped, a.sources, a.target, a.recipe, a.version, a.layout)
    assert (render(copy), render_markdown(copy)) == first


@pytest.mark.parametrize("plan", PLANS)
def test_entry_parts_are_keys_and_form(plan):
    for entry in plan.entries:
        keys, form = entry_parts(entry)
        assert keys == entry_keys(entry) and form == entry_form(entry)
        assert entry_parts(Entry("x", entry.shape, entry.dtype, entry.pieces, entry.uncovered, entry.kind))[1] == form


SOURCES = {
    "same": lambda i, j, k: f"src.{i}.x.{j}.{k}",
    "swap": lambda i, j, k: f"src.{j}.x.{i}.{k}",
    "one": lambda i, j, k: f"src.{j}.x",
    "two_of_three": lambda i, j, k: f"src.{k}.x.{i}",
    "double": lambda i, j, k: f"src.{2 * i}.x.{j + 1}.{k}",
    "reversed": lambda i, j, k: f"src.{9 - j}.{i}",
    "repeat": lambda i, j, k: f"src.{i}.{i}.{j}",
    "const": lambda i, j, k: "src.shared",
    "braces": lambda i, j, k: f"src.{{a,b}}.{i}.{j}",
    "scrambled": lambda i, j, k: f"src.{(i * 7 + j * 3) % 5}.{k}",
}


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=40),
    st.sampled_from(sorted(SOURCES)),
    st.sampled_from(["a.{i}.b.{j}.c.{k}", "a.{k}.{j}.{i}", "a.{i}.{j}"]),
)
def test_folding_checks_lines_on_integers_as_expanding_them_would(cells, mapping, target):
    """``_covers`` (on the integers) and ``_expands_to`` (writing out every key) accept
    the same lines, so folding gives the same lines either way (repeated keys too)."""
    keys = sorted((target.format(i=i, j=j, k=k), SOURCES[mapping](i, j, k)) for i, j, k in cells)
    fast = [(g.patterns, g.members) for g in fold(keys, lambda k: k, lambda k: ())]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grouping, "_covers", lambda templates, patterns, sub, *_: grouping._expands_to(patterns, sub))
        slow = [(g.patterns, g.members) for g in fold(keys, lambda k: k, lambda k: ())]
    assert fast == slow


