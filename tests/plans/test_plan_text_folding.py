"""Readable plans at scale: repeated layers fold into one line, and unfold back exactly."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchgraft.keys.folding import Group, brace, expand, expand_line, fold, merge_leaves, slot_values
from torchgraft.plans.markdown import render_markdown
from torchgraft.plans.text import group_entries, render, table
from torchgraft.plans.types import Entry, Piece, Plan, Read, SourceRef, TargetRef, Unused

FINGERPRINT = {"size": 1000, "mtime_ns": 1, "header_sha256": "0" * 64}



def ungroup(groups: Iterable[Group[Entry]]) -> list[Entry]:
    """Every entry the lines stand for, rebuilt from each line's patterns (the inverse of
    ``group_entries``, up to order)."""
    out = []
    for group in groups:
        first = group.members[0]
        for keys in expand(group.patterns):
            at, pieces = 1, []
            for piece in first.pieces:
                reads = tuple(replace(r, key=k) for r, k in zip(piece.reads, keys[at : at + len(piece.reads)]))
                pieces.append(replace(piece, reads=reads))
                at += len(piece.reads)
            out.append(replace(first, key=keys[0], pieces=tuple(pieces)))
    return out

def _assign(key, shape, source_key, rule="rules[0]", transforms=(), region=None):
    source_shape = tuple(reversed(shape)) if "transpose" in transforms else shape  # as the planner makes it
    read = Read("minilm", source_key, source_shape, "float32")
    return Entry(key, shape, "float32", (Piece((read,), rule, region, transforms),), (), "parameter")


def synthetic_plan(layers: int = 60, experts: int = 0) -> Plan:
    """A MiniLM-like encoder of ``layers`` blocks (optionally with MoE experts) taken into a new model."""
    entries = [_assign("tok_emb.weight", (30522, 384), "embeddings.word_embeddings.weight")]
    unused = []
    for i in range(layers):
        for name, src in [("q", "self.query"), ("k", "self.key"), ("v", "self.value"), ("proj", "output.dense")]:
            entries.append(_assign(f"blocks.{i}.attn.{name}.weight", (384, 384), f"encoder.layer.{i}.attention.{src}.weight"))
            entries.append(_assign(f"blocks.{i}.attn.{name}.bias", (384,), f"encoder.layer.{i}.attention.{src}.bias"))
        entries.append(_assign(f"blocks.{i}.ff.up.weight", (1536, 384), f"encoder.layer.{i}.intermediate.dense.weight", "rules[1]", ("transpose",)))
        for e in range(experts):
            entries.append(_assign(f"blocks.{i}.moe.{e}.w1", (64, 384), f"encoder.layer.{i}.experts.{e}.w1"))
        entries.append(Entry(f"blocks.{i}.ln.weight", (384,), "float32", (), (), "parameter"))
        entries.append(Entry(f"blocks.{i}.ln.bias", (384,), "float32", (), (), "parameter"))
        unused += [Unused("minilm", f"encoder.layer.{i}.output.LayerNorm.{leaf}", (384,), "float32") for leaf in ("weight", "bias")]
    entries += [Entry("head.weight", (5, 384), "float32", (), (), "parameter"), Entry("head.bias", (5,), "float32", (), (), "parameter")]
    unused += [Unused("minilm", "pooler.dense.weight", (384, 384), "float32"), Unused("minilm", "pooler.dense.bias", (384,), "float32")]
    return Plan(
        tuple(entries), tuple(unused), (),
        (SourceRef("minilm", "minilm.safetensors", "safetensors", None, FINGERPRINT),),
        TargetRef({"_target_": "pkg.Model", "layers": layers}, 0, "0" * 64), {}, "0.1.0",
    )


def _by_key(entries):
    return sorted(entries, key=lambda e: e.key)


def _normalized(lines):
    return sorted(re.sub(r" +", " ", line.strip()) for line in lines)


def _section(text: str, start: int, stop: str) -> list[str]:
    lines = text.splitlines()
    return lines[start : lines.index(stop, start)] if stop in lines[start:] else lines[start:]


def test_a_60_layer_plan_reads_as_a_screenful():
    plan = synthetic_plan(60)
    text = render(plan)
    assert len(plan.entries) == 663 and len(text.splitlines()) < 60
    assert text.splitlines()[3:] == [
        "",
        "tok_emb.weight                   [30522,384]  f32  ← minilm:embeddings.word_embeddings.weight  (rules[0])",
        "blocks.{0..59}.attn.q.weight     [384,384]    f32  ← minilm:encoder.layer.{0..59}.attention.self.query.weight  (rules[0])",
        "blocks.{0..59}.attn.q.bias       [384]        f32  ← minilm:encoder.layer.{0..59}.attention.self.query.bias  (rules[0])",
        "blocks.{0..59}.attn.k.weight     [384,384]    f32  ← minilm:encoder.layer.{0..59}.attention.self.key.weight  (rules[0])",
        "blocks.{0..59}.attn.k.bias       [384]        f32  ← minilm:encoder.layer.{0..59}.attention.self.key.bias  (rules[0])",
        "blocks.{0..59}.attn.v.weight     [384,384]    f32  ← minilm:encoder.layer.{0..59}.attention.self.value.weight  (rules[0])",
        "blocks.{0..59}.attn.v.bias       [384]        f32  ← minilm:encoder.layer.{0..59}.attention.self.value.bias  (rules[0])",
        "blocks.{0..59}.attn.proj.weight  [384,384]    f32  ← minilm:encoder.layer.{0..59}.attention.output.dense.weight  (rules[0])",
        "blocks.{0..59}.attn.proj.bias    [384]        f32  ← minilm:encoder.layer.{0..59}.attention.output.dense.bias  (rules[0])",
        "blocks.{0..59}.ff.up.weight      [1536,384]   f32  ← minilm:encoder.layer.{0..59}.intermediate.dense.weight | transpose  (rules[1])",
        "blocks.{0..59}.ln.{weight,bias}  [384]        f32  keep",
        "head.weight                      [5,384]      f32  keep",
        "head.bias                        [5]          f32  keep",
        "",
        "unused source tensors (122, 757.5 KiB):",
        "  minilm:encoder.layer.{0..59}.output.LayerNorm.{weight,bias}",
        "  minilm:pooler.dense.{weight,bias}",
        "",
        "663 target tensors (315.2 MiB): 541 assigned (315.1 MiB), 122 kept (187.5 KiB); 122 source tensors unused (757.5 KiB)",
    ]
    assert text.splitlines()[2] == (
        "source  minilm = minilm.safetensors  (safetensors, 1000 B): 541 tensors read (315.1 MiB), 122 unused (757.5 KiB)"
    )


def test_ungrouping_gives_back_every_entry():
    plan = synthetic_plan(60, experts=4)
    groups = group_entries(plan.entries)
    assert len(groups) == 14  # 13 lines of the plain model, 1 for all 240 experts
    assert _by_key(ungroup(groups)) == _by_key(plan.entries)


def test_the_folded_text_expands_to_the_one_line_per_tensor_text():
    plan = synthetic_plan(60, experts=4)
    folded, flat = render(plan), render(plan, grouped=False)
    n = len(plan.entries)
    assert len(flat.splitlines()) > n > len(folded.splitlines())
    table = _section(folded, 4, "")
    assert _normalized(line for row in table for line in expand_line(row)) == _normalized(_section(flat, 4, ""))
    unused = _section(folded, folded.splitlines().index("unused source tensors (122, 757.5 KiB):") + 1, "")
    flat_unused = _section(flat, flat.splitlines().index("unused source tensors (122, 757.5 KiB):") + 1, "")
    assert sorted(line.strip() for row in unused for line in expand_line(row)) == sorted(line.split()[0] for line in flat_unused)


@pytest.mark.slow  # 100k entries: 3 s, in the scale tier (`pytest -m slow`; CI runs both tiers)
def test_a_100k_tensor_plan_of_a_60_layer_model_is_a_screenful():
    plan = synthetic_plan(60, experts=1650)
    assert len(plan.entries) > 99_000
    rows = table(plan)
    assert len(rows) == 14
    assert rows[10].startswith("blocks.{0..59}.moe.{0..1649}.w1  [64,384]     f32  ← minilm:encoder.layer.{0..59}.experts.{0..1649}.w1")


def test_a_plan_s_folded_lines_are_forgotten_with_the_plan():
    """They hold its entries: kept after it, the collector walks them all, at exit if not before."""
    plan = synthetic_plan(3)
    entry = plan.entries[0]
    render_markdown(plan)
    del plan
    assert sys.getrefcount(entry) == 2  # ``entry`` and the call's argument


def test_two_integers_that_vary_independently_fold_as_a_product():
    keys = [(f"layers.{i}.experts.{e}.w", f"model.layers.{i}.mlp.experts.{e}.w") for i in range(60) for e in range(8)]
    (group,) = fold(keys, lambda k: k, lambda k: ())
    assert group.patterns == ("layers.{0..59}.experts.{0..7}.w", "model.layers.{0..59}.mlp.experts.{0..7}.w")
    assert sorted(expand(group.patterns)) == sorted(keys)


def test_integers_that_follow_by_arithmetic_fold_in_lockstep():
    keys = [(f"student.{j}.ff", f"teacher.{2 * j}.ff") for j in range(6)] + [(f"rev.{i}", f"src.{5 - i}") for i in range(6)]
    patterns = [g.patterns for g in fold(keys, lambda k: k, lambda k: ())]
    assert patterns == [("student.{0..5}.ff", "teacher.{0..10..2}.ff"), ("rev.{0..5}", "src.{5..0}")]


def test_two_lines_do_not_fold_and_keys_with_braces_never_do():
    keys = [("a.0.w",), ("a.1.w",), ("x.{i}.0",), ("x.{i}.1",), ("x.{i}.2",)]
    assert [g.patterns for g in fold(keys, lambda k: k, lambda k: ())] == [("a.0.w",), ("a.1.w",), ("x.{i}.0",), ("x.{i}.1",), ("x.{i}.2",)]


def test_a_key_with_braces_of_its_own_shares_no_line_with_its_siblings():
    keys = [("0.scale",), ("1.scale",), ("2.scale",), ("{0..2}.bias",), ("norm.{weight,bias}",), ("norm.scale",)]
    groups = merge_leaves(fold(keys, lambda k: k, lambda k: ()), lambda a, b: True)
    assert [g.patterns for g in groups] == [("{0..2}.scale",), ("{0..2}.bias",), ("norm.{weight,bias}",), ("norm.scale",)]
    assert [len(g.members) for g in groups] == [3, 1, 1, 1]


def test_brace_notation():
    assert brace([0, 1, 2, 3]) == "{0..3}" and brace([3, 2, 1]) == "{3..1}" and brace([0, 4, 8]) == "{0..8..4}"
    assert brace([0, 1]) == "{0,1}" and brace([0, 5, 6]) == "{0,5,6}" and brace(["weight", "bias"]) == "{weight,bias}"
    assert slot_values("3..1") == ["3", "2", "1"] and slot_values("0..8..4") == ["0", "4", "8"]
    assert slot_values("'size': 8") is None and slot_values("i") is None


@settings(deadline=None)
@given(
    st.sets(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=24),
    st.sampled_from(["same", "swap", "one", "double", "const"]),
)
def test_folding_never_loses_or_invents_a_key(cells, mapping):
    """Whatever the keys, expanding the folded lines gives back exactly the input."""
    source = {
        "same": lambda i, j: f"src.{i}.x.{j}",
        "swap": lambda i, j: f"src.{j}.x.{i}",
        "one": lambda i, j: f"src.{j}.x",
        "double": lambda i, j: f"src.{2 * i}.x.{j + 1}",
        "const": lambda i, j: "src.shared",
    }[mapping]
    keys = [(f"layers.{i}.sub.{j}", source(i, j)) for i, j in sorted(cells)]
    groups = fold(keys, lambda k: k, lambda k: ())
    assert sorted(k for g in groups for k in expand(g.patterns)) == sorted(keys)
    assert sorted(k for g in groups for k in g.members) == sorted(keys)


def test_plan_md_folds_long_lists_into_details():
    text = render_markdown(synthetic_plan(60))
    assert text.startswith("### torchgraft plan `")
    assert "**Target** `pkg.Model(layers=60)`, seed 0 · torchgraft 0.1.0" in text
    assert "| `minilm` | `minilm.safetensors` | safetensors | 1000 B | 541 (315.1 MiB) | 122 (757.5 KiB) |" in text
    assert "<details open><summary>Transfer: 663 target tensors in 13 lines</summary>" in text
    assert "<details open><summary>Unused source tensors: 122 (757.5 KiB)</summary>" in text
    big = synthetic_plan(3)
    many = Plan(big.entries, tuple(Unused("minilm", f"extra{i}.weight", (2,), "float32") for i in range(40)), (), big.sources, big.target, {}, "0.1.0")
    assert "<details><summary>Unused source tensors: 40 (320 B)</summary>" in render_markdown(many)


def test_render_is_deterministic():
    assert render(synthetic_plan(12)) == render(synthetic_plan(12))
    assert render_markdown(synthetic_plan(12)) == render_markdown(synthetic_plan(12))
