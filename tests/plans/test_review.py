"""The review building blocks in-process: the plan hash, reading plan files, plan diffs,
graft-diff, target drift, fingerprints. Exact messages, word for word."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from test_plan_text_folding import synthetic_plan
from torch import nn

import torchgraft
import torchgraft.examples
from torchgraft.cli.diff import main as graft_diff
from torchgraft.cli.graft import refuse_overrides
from torchgraft.core.errors import DriftError, PlanError, RecipeError
from torchgraft.examples.checkpoints import example_path
from torchgraft.execution.sources import pin_contents
from torchgraft.plans import fingerprints
from torchgraft.plans.codec import document_sha256
from torchgraft.plans.diff import diff_plans
from torchgraft.plans.files import job_name, read_plan
from torchgraft.plans.review import check_target
from torchgraft.plans.types import Read
from torchgraft.recipe.run_options import parse_run_options, verify_mode
from torchgraft.recipe.source import bundled_recipes


def write(path, plan) -> str:
    path.write_text(plan.to_json())
    return path.name


# -- the plan hash and reading plan files -------------------------------------------------


def test_a_plan_file_carries_the_sha256_of_everything_else_in_it():
    plan = synthetic_plan(3)
    data = json.loads(plan.to_json())
    assert data["sha256"] == plan.sha256 == document_sha256(data)
    data["entries"][0]["shape"] = [1, 1]
    assert document_sha256(data) != data["sha256"]


def test_reading_a_plan_file_refuses_what_is_not_an_unedited_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = synthetic_plan(3)
    assert read_plan(write(tmp_path / "ok.plan.json", plan), "apply") == plan

    def refusal(name: str, text: str | None, error=PlanError) -> str:
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(error) as info:
            read_plan(name, "apply")
        return str(info.value)

    assert refusal("gone.plan.json", None) == "apply: gone.plan.json: no such plan file"
    assert refusal("bad.plan.json", "{") == (
        "apply: bad.plan.json: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    )
    data = json.loads(plan.to_json())
    data["entries"][0]["shape"] = [-1]
    assert refusal("schema.plan.json", json.dumps(data)) == (
        "apply: schema.plan.json: does not conform to the plan schema at entries/0/shape/0: -1 is less than the minimum of 0"
    )
    edited = plan.to_json().replace('"layers": 3', '"layers": 4')
    assert refusal("ft.plan.json", edited, DriftError) == (
        "apply: ft.plan.json: the plan does not match its sha256 (was it edited by hand?); a plan runs only as it was "
        "written. Re-validate the recipe with: graft recipe=ft dry_run=true plan_dir=."
    )
    data = json.loads(plan.to_json())
    del data["sha256"]
    assert refusal("plan.json", json.dumps(data), DriftError) == (
        "apply: plan.json: the plan carries no sha256 (was it edited by hand?); a plan runs only as it was "
        "written. Re-validate the recipe with: graft recipe=NAME dry_run=true"
    )


# -- diffs ------------------------------------------------------------------------------


def test_a_diff_names_each_kind_of_change_and_folds_repeated_layers():
    old = synthetic_plan(12)
    entries = tuple(
        replace(e, pieces=(replace(e.pieces[0], reads=(replace(e.pieces[0].reads[0], key=e.pieces[0].reads[0].key.replace("self.query", "self.q")),)),))
        if ".attn.q." in e.key else e
        for e in old.entries
    )
    entries = tuple(e for e in entries if e.key != "head.bias")
    source = replace(old.sources[0], fingerprint={**old.sources[0].fingerprint, "size": 2000, "mtime_ns": 2})
    new = replace(old, entries=entries, unused=old.unused[:-1], sources=(source,), recipe={"keep": ["head"]}, version="0.2.0")
    result = diff_plans(old, new)
    assert result.text("a.json", "b.json", old, new) == f"""\
--- a.json  (plan {old.sha256[:12]})
+++ b.json  (plan {new.sha256[:12]})
plan:
  ~ torchgraft_version: "0.1.0" -> "0.2.0"
recipe:
  + keep: ["head"]
sources:
  ~ minilm: size 1000 -> 2000, mtime_ns changed
entries:
  - head.bias  [5]  f32  keep
  ~ blocks.{{0..11}}.attn.q.weight: ← minilm:encoder.layer.{{0..11}}.attention.self.query.weight (rules[0]) -> ← minilm:encoder.layer.{{0..11}}.attention.self.q.weight (rules[0])
  ~ blocks.{{0..11}}.attn.q.bias: ← minilm:encoder.layer.{{0..11}}.attention.self.query.bias (rules[0]) -> ← minilm:encoder.layer.{{0..11}}.attention.self.q.bias (rules[0])
unused source tensors:
  - minilm:pooler.dense.bias
"""
    assert diff_plans(old, old).same


def test_with_content_hashes_a_new_mtime_is_not_a_difference():
    pinned = {"size": 1, "mtime_ns": 1, "header_sha256": "a" * 64, "content_sha256": "b" * 64}
    assert fingerprints.differences(pinned, {**pinned, "mtime_ns": 2}) == []
    assert fingerprints.differences(pinned, {**pinned, "content_sha256": "c" * 64}) == ["content_sha256"]
    fast = {k: v for k, v in pinned.items() if k != "content_sha256"}
    assert fingerprints.differences(fast, {**fast, "mtime_ns": 2}) == ["mtime_ns"]
    assert fingerprints.differences(fast, pinned) == ["content_sha256"]


def test_graft_diff_exits_0_when_same_1_when_different_2_on_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.json", synthetic_plan(3))
    write(tmp_path / "b.json", synthetic_plan(3))
    write(tmp_path / "c.json", synthetic_plan(4))
    assert graft_diff(["a.json", "b.json"]) == 0
    assert capsys.readouterr().out == "no differences: a.json and b.json describe the same transfer\n"
    assert graft_diff(["a.json", "c.json"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[2:5] == ["target:", "  ~ class: pkg.Model(layers=3) -> pkg.Model(layers=4)", "entries:"]
    assert "  + blocks.3.attn.q.weight     [384,384]   f32  ← minilm:encoder.layer.3.attention.self.query.weight  (rules[0])" in out
    assert out.endswith("  + blocks.3.ln.{weight,bias}  [384]       f32  keep\nunused source tensors:\n  + minilm:encoder.layer.3.output.LayerNorm.{weight,bias}\n")
    assert graft_diff(["a.json", "nope.json"]) == 2
    assert capsys.readouterr().err == "error: nope.json: no such plan file\n"


# -- apply's checks ----------------------------------------------------------------------


@pytest.fixture
def conv_plan():
    return torchgraft.plan(bundled_recipes() / "conv_only.yaml")


def test_a_changed_target_class_is_named_with_its_changes(conv_plan, monkeypatch):
    check_target(conv_plan)  # unchanged: no error

    class Wider(torchgraft.examples.ConvNet):
        def __init__(self, num_classes: int = 10):
            super().__init__(num_classes)
            self.fc3 = nn.Linear(84, num_classes + 2)
            self.extra = nn.Linear(2, 2)

    monkeypatch.setattr(torchgraft.examples, "ConvNet", Wider)
    with pytest.raises(DriftError) as info:
        check_target(conv_plan)
    assert str(info.value) == (
        "target: torchgraft.examples.ConvNet changed since the plan was made "
        "(its tensors differ: new extra.{weight,bias}; fc3.weight [5,84] -> [7,84]; fc3.bias [5] -> [7])"
    )


def test_hash_mode_pins_every_byte(conv_plan):
    pinned = pin_contents(conv_plan)
    digest = hashlib.sha256(open(example_path("convnet"), "rb").read()).hexdigest()
    assert pinned.sources[0].fingerprint == {**conv_plan.sources[0].fingerprint, "content_sha256": digest}
    assert "(safetensors, 243.0 KiB, sha256 " + digest[:12] + ")" in torchgraft.render(pinned)


def test_apply_refuses_overrides_it_would_ignore():
    refuse_overrides(["apply=p.plan.json", "output.path=x.pt", "output.overwrite=true", "dry_run=true", "hydra.verbose=true"])
    with pytest.raises(RecipeError) as info:
        refuse_overrides(["apply=p.plan.json", "recipe=ft", "output.dtype=bfloat16"])
    assert str(info.value) == (
        "apply: a reviewed plan runs as it is; recipe=ft output.dtype=bfloat16 would not change it (only output.path, "
        "output.overwrite and dry_run apply; to change the transfer, make and review a new plan)"
    )
    with pytest.raises(RecipeError) as info:
        parse_run_options({"apply": "p.plan.json", "check": "p.plan.json"})
    assert str(info.value) == "check: cannot be combined with apply (check compares a recipe with a plan; apply runs a plan)"


def test_small_switches():
    assert verify_mode("hash") == "hash" and verify_mode(None) == "fast"
    with pytest.raises(RecipeError) as info:
        verify_mode("full")
    assert str(info.value) == "verify_sources: must be one of fast, hash (got 'full')"
    assert job_name("ft", None) == "ft" and job_name("conv_only", "plans/ft.plan.json") == "apply_ft"
    assert job_name("conv_only", "outputs/x/plan.json") == "apply"


def test_read_regions_count_only_their_bytes():
    from torchgraft.plans.text import read_nbytes

    assert read_nbytes(Read("s", "k", (4, 20), "float32", "[:, :10]")) == 160
    assert read_nbytes(Read("s", "k", (4, 20), "float32")) == 320


@pytest.mark.slow
def test_graft_diff_as_a_command(tmp_path):
    """The installed graft-diff console script (a subprocess smoke test)."""
    from conftest import run_cli

    write(tmp_path / "a.json", synthetic_plan(3))
    write(tmp_path / "b.json", synthetic_plan(4))
    different = run_cli("graft-diff", "a.json", "b.json", cwd=tmp_path)
    assert different.returncode == 1 and different.stdout.startswith("--- a.json  (plan ")


def test_every_field_of_the_plan_is_compared():
    from torchgraft.plans.types import Layout

    plan = synthetic_plan(3)
    sharded = replace(plan, layout=Layout(shard_size=1000), target=replace(plan.target, init="per_module"))
    assert [(s.title, s.lines) for s in diff_plans(plan, sharded).sections] == [
        ("plan", ('+ output.files: []', "+ output.shard_size: 1000", '+ target.init: "per_module"'))
    ]
    pinned = replace(plan, sources=(replace(plan.sources[0], fingerprint={**plan.sources[0].fingerprint, "content_sha256": "c" * 64}),))
    touched = replace(pinned, sources=(replace(pinned.sources[0], fingerprint={**pinned.sources[0].fingerprint, "mtime_ns": 9}),))
    assert diff_plans(pinned, touched).same and pinned.sha256 != touched.sha256
