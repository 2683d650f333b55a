"""A plan file is attacker-written: its sha256 is a self-hash anyone recomputes. A forged
plan, schema-valid and "unedited", runs nothing it names but the target class and is
refused with one line before anything is built or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.api import apply
from torchgraft.core.errors import GraftError, PlanError
from torchgraft.examples import ConvNet
from torchgraft.plans.codec import document_sha256
from torchgraft.plans.files import write_plan


@pytest.fixture
def plan_doc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(7)
    save_file(ConvNet(num_classes=10).state_dict(), tmp_path / "convnet.safetensors")
    plan = torchgraft.plan({
        "sources": {"pretrained": str(tmp_path / "convnet.safetensors")},
        "target": {"_target_": "torchgraft.examples.ConvNet", "num_classes": 5},
        "rules": [{"from": "pretrained", "select": ["conv1", "conv2"]}],
        "keep": ["fc1", "fc2", "fc3"],
    })
    path = write_plan(plan, tmp_path / "p.plan")
    return json.loads(path.read_text())


def forge(tmp_path: Path, doc: dict, edit) -> str:
    doc = json.loads(json.dumps(doc))
    edit(doc)
    doc["sha256"] = document_sha256(doc)
    path = tmp_path / "forged.plan.json"
    path.write_text(json.dumps(doc))
    return str(path)


def refused(path: str, tmp_path: Path, dry_run: bool = False) -> str:
    with pytest.raises(GraftError) as info:
        apply(path, tmp_path / "out.safetensors", dry_run=dry_run)
    assert not (tmp_path / "out.safetensors").exists()
    return str(info.value)


def set_arg(value):
    return lambda d: d["target"]["spec"].__setitem__("num_classes", value)


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("target, reason", [
    ("builtins.open", "'builtins.open' is refused in a plan (a plan file may not name what touches files, "
                      "processes or the interpreter)"),
    ("io.FileIO", "'io.FileIO' is refused in a plan (a plan file may not name what touches files, processes "
                  "or the interpreter)"),
    ("torch.load", "'torch.load' is a function, not a class; a plan may call no function"),
    ("shutil.copyfile", "'shutil.copyfile' is refused in a plan (a plan file may not name what touches files, "
                        "processes or the interpreter)"),
])
def test_a_nested_target_that_would_open_a_file_is_refused_before_anything_runs(plan_doc, tmp_path, target, reason,
                                                                                 dry_run):
    marker = tmp_path / "marker"
    path = forge(tmp_path, plan_doc, set_arg({"_target_": target, "file": str(marker), "mode": "w",
                                              "src": str(tmp_path / "convnet.safetensors"), "dst": str(marker)}))
    message = refused(path, tmp_path, dry_run)
    assert message == f"apply: {path}: target.spec.num_classes._target_: {reason}"
    assert not marker.exists()


def test_a_class_from_a_module_the_target_did_not_load_is_refused(plan_doc, tmp_path):
    path = forge(tmp_path, plan_doc, set_arg({"_target_": "antigravity.Thing"}))
    assert refused(path, tmp_path) == (
        f"apply: {path}: target.spec.num_classes._target_: 'antigravity.Thing' is not a class loaded with the "
        "target; a plan does not import modules of its own choosing")


def test_an_interpolation_in_the_spec_is_refused(plan_doc, tmp_path):
    path = forge(tmp_path, plan_doc, set_arg("${oc.env:HOME}"))
    assert refused(path, tmp_path) == (
        f"apply: {path}: target.spec.num_classes: an interpolation ('${{...}}') in a plan's target spec is refused")


def test_a_top_level_function_is_refused(plan_doc, tmp_path):
    path = forge(tmp_path, plan_doc, lambda d: d["target"].__setitem__("spec", {"_target_": "torch.load", "f": "x"}))
    assert refused(path, tmp_path) == (
        f"apply: {path}: target.spec._target_: 'torch.load' is not a torch.nn.Module subclass; a plan builds only "
        "a model class")


def test_a_nested_module_class_shown_in_full_still_applies(plan_doc, tmp_path):
    """The checks refuse what a planner could not make, not ordinary nested classes."""
    from torchgraft.core.specs import check_plan_spec

    check_plan_spec({"_target_": "torchgraft.examples.ConvNet", "act": {"_target_": "torch.nn.GELU"}})


def first_entry_with_reads(doc):
    return next(e for e in doc["entries"] if e["pieces"])


def _unknown_source(d):
    first_entry_with_reads(d)["pieces"][0]["reads"][0]["source"] = "nowhere"


def _bad_region(d):
    first_entry_with_reads(d)["pieces"][0]["reads"][0]["region"] = "[0:999]"


def _duplicate(d):
    d["entries"].append(d["entries"][0])


def _wrong_size(d):
    first_entry_with_reads(d)["shape"][0] += 1


def _empty_weights(d):
    piece = first_entry_with_reads(d)["pieces"][0]
    piece["reads"].append(dict(piece["reads"][0]))
    piece["merge"] = {"weights": []}


def _huge_seed(d):
    d["target"]["seed"] = 2**70


def _traversal(d):
    d["output"] = {"shard_size": None, "files": [{"source": "pretrained", "name": "../../owned.sh", "size": 3,
                                                   "sha256": "0" * 64}]}


def _metadata_key(d):
    d["entries"][0]["key"] = "__metadata__"


@pytest.mark.parametrize("edit, expected", [
    (_unknown_source, "entries[0]: reads from source 'nowhere', which the plan does not have"),
    (_bad_region, "entries[0].pieces[0].reads[0].region: slice 0:999 exceeds dim 0 of size 6"),
    (_duplicate, "entries[10].key: 'conv1.weight' appears twice"),
    (_wrong_size, "entries[0].pieces[0]: gives a tensor of shape [6, 3, 5, 5] for a destination of shape "
                  "[7, 3, 5, 5]"),
    (_empty_weights, "entries[0].pieces[0].merge: expected 'mean' or one weight per read (2)"),
    (_huge_seed, "target.seed: 1180591620717411303424 is out of range (a seed is a 64-bit integer)"),
    (_traversal, "output.files[0].name: '../../owned.sh' is not a plain file name (no directories, '..' or NUL)"),
    (_metadata_key, "entries: '__metadata__' is not a tensor name safetensors can store"),
], ids=["unknown-source", "bad-region", "duplicate", "wrong-size", "empty-weights", "seed", "traversal", "metadata"])
def test_a_forged_schema_valid_plan_is_one_line(plan_doc, tmp_path, edit, expected):
    path = forge(tmp_path, plan_doc, edit)
    with pytest.raises(PlanError) as info:
        apply(path, tmp_path / "out.safetensors")
    assert str(info.value) == f"apply: {path}: {expected}"
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe{}", "not a torchgraft plan (not UTF-8 text at byte 0)"),
    (b"[" * 100000 + b"]" * 100000, "not a torchgraft plan (JSON nested too deeply)"),
    (b'{"a": ' + b"9" * 5000 + b"}", "not a torchgraft plan (Exceeds the limit (4300 digits) for integer string "
                                     "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to "
                                     "increase the limit)"),
])
def test_a_corrupt_plan_file_is_one_line(tmp_path, content, reason):
    path = tmp_path / "bad.plan.json"
    path.write_bytes(content)
    with pytest.raises(PlanError) as info:
        apply(str(path), tmp_path / "out.safetensors")
    assert str(info.value) == f"apply: {path}: {reason}"


def test_a_forged_read_of_another_shape_than_the_source_holds_is_refused(plan_doc, tmp_path):
    def edit(d):
        entry = first_entry_with_reads(d)
        entry["shape"][0] = entry["pieces"][0]["reads"][0]["shape"][0] = 3

    path = forge(tmp_path, plan_doc, edit)
    message = refused(path, tmp_path)
    assert message == (f"sources.pretrained: the plan reads 'conv1.weight', and {tmp_path / 'convnet.safetensors'} "
                       "holds it with another shape or dtype")
