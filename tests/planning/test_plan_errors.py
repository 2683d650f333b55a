"""Bad input: one clear error naming the recipe field, the key and the reason, raised
while planning (before any tensor data is read), and nothing written."""

from __future__ import annotations

import importlib
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.core.errors import PlanError, RecipeError, SourceError, TargetError
from torchgraft.examples import ConvNet, LinearProbe


@pytest.fixture
def convnet(tmp_path):
    torch.manual_seed(7)
    path = tmp_path / "convnet.safetensors"
    save_file(ConvNet(num_classes=10).state_dict(), path)
    return str(path)


@pytest.fixture
def probe(tmp_path):
    torch.manual_seed(8)
    path = tmp_path / "probe.safetensors"
    save_file(LinearProbe(in_features=12, num_classes=4).state_dict(), path)
    return str(path)


def recipe(source: str, **fields) -> dict:
    base = {
        "sources": {"pretrained": source},
        "target": {"_target_": "torchgraft.examples.ConvNet", "num_classes": 5},
        "rules": [{"from": "pretrained", "select": ["conv1", "conv2"]}],
        "keep": ["fc1", "fc2", "fc3"],
    }
    return {**base, **fields}


def probe_recipe(source: str, rules: list, **fields) -> dict:
    return {
        "sources": {"pretrained": source},
        "target": {"_target_": "torchgraft.examples.LinearProbe", "in_features": 20, "num_classes": 4},
        "rules": rules,
        "keep": ["norm"],
        **fields,
    }


def error_of(cfg: dict, kind=PlanError) -> str:
    with pytest.raises(kind) as info:
        torchgraft.plan(cfg)
    return str(info.value)


def test_unknown_field(convnet):
    cfg = recipe(convnet, rules=[{"from": "pretrained", "selct": ["conv1"]}])
    assert error_of(cfg, RecipeError) == "rules[0].selct: unknown field (did you mean 'select'?)"


def test_unknown_source_name(convnet):
    cfg = recipe(convnet, rules=[{"from": "pretrianed", "select": ["conv1", "conv2"]}])
    assert error_of(cfg, RecipeError) == "rules[0].from: unknown source 'pretrianed' (did you mean 'pretrained'?)"


def test_missing_source_file(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    assert error_of(recipe(missing), SourceError) == f"sources.pretrained: {missing}: no such file or directory"


def test_shape_mismatch(convnet):
    cfg = recipe(convnet, rules=[{"from": "pretrained"}], keep=[])
    assert error_of(cfg) == (
        "rules[0]: pretrained:fc3.bias has shape [10] but fc3.bias has shape [5] "
        "(add 'fc3.bias' to rules[0].exclude and 'fc3.bias' to keep to keep its initial value, or set policy.mismatch=skip to leave out every mismatch)"
    )


def test_mismatch_skip_lists_the_tensor_and_counts_it_as_unassigned(convnet):
    cfg = recipe(convnet, rules=[{"from": "pretrained"}], keep=["fc3"], policy={"mismatch": "skip"})
    plan = torchgraft.plan(cfg)
    assert [(s.key, s.rule) for s in plan.skipped] == [("fc3.bias", "rules[0]"), ("fc3.weight", "rules[0]")]
    assert [e.key for e in plan.entries if e.kept] == ["fc3.weight", "fc3.bias"]


def test_overlapping_regions_from_two_rules_name_both(probe):
    rules = [
        {"to": "fc.weight[:, :10]", "from": "pretrained:fc.weight[:, :10]"},
        {"to": "fc.weight[:, 8:12]", "from": "pretrained:fc.weight[:, 0:4]"},
        {"to": "fc.bias", "from": "pretrained:fc.bias"},
    ]
    assert error_of(probe_recipe(probe, rules)) == (
        "rules[1].to: 'fc.weight[:, 8:12]' overlaps 'fc.weight[:, :10]', which rules[0] already assigns"
    )


def test_two_rules_assigning_one_tensor_name_both(convnet):
    cfg = recipe(convnet, rules=[{"from": "pretrained", "select": ["conv1", "conv2"]}, {"to": "conv1.bias", "from": "pretrained:conv1.bias"}])
    assert error_of(cfg) == "rules[1].to: 'conv1.bias', which rules[0] already assigns"


def test_rename_target_absent_from_the_model_lists_the_closest_keys(convnet):
    cfg = recipe(convnet, rules=[{"from": "pretrained", "select": ["conv1", "conv2"], "rename": {"conv2": "conv3"}}])
    assert error_of(cfg) == (
        "rules[0].rename: pretrained:conv2.bias -> 'conv3.bias': the target has no such tensor "
        "(closest: conv2.bias, conv1.bias, fc3.bias)"
    )


def test_missing_skip_leaves_the_key_out(convnet):
    cfg = recipe(
        convnet,
        rules=[{"from": "pretrained", "select": ["conv1", "conv2"], "rename": {"conv2": "conv3"}, "missing": "skip"}],
        keep=["conv2", "fc1", "fc2", "fc3"],
    )
    plan = torchgraft.plan(cfg)
    assert [e.key for e in plan.entries if not e.kept] == ["conv1.weight", "conv1.bias"]


def test_unassigned_tensors_under_the_default_policy(convnet):
    cfg = recipe(convnet, keep=["fc1"])
    assert error_of(cfg) == (
        "policy.unassigned: 4 target tensors assigned by no rule and not in keep: fc2.{weight,bias}, "
        "fc3.{weight,bias} (list them in keep, or set policy.unassigned=keep)"
    )


def test_policy_unassigned_keep_relaxes_it(convnet):
    plan = torchgraft.plan(recipe(convnet, keep=[], policy={"unassigned": "keep"}))
    assert sum(e.kept for e in plan.entries) == 6


def test_region_out_of_bounds(probe):
    rules = [{"to": "fc.weight[:, :20]", "from": "pretrained:fc.weight[:, :20]"}, {"to": "fc.bias", "from": "pretrained:fc.bias"}]
    assert error_of(probe_recipe(probe, rules)) == (
        "rules[0].from: pretrained:fc.weight[:, :20]: slice :20 exceeds dim 1 of size 12 (shape [4,12])"
    )


def test_region_shapes_must_agree(probe):
    rules = [{"to": "fc.weight[:, :10]", "from": "pretrained:fc.weight[:, :8]"}, {"to": "fc.bias", "from": "pretrained:fc.bias"}]
    assert error_of(probe_recipe(probe, rules)) == (
        "rules[0].to: pretrained:fc.weight[:, :8] has shape [4,8] but fc.weight[:, :10] has shape [4,10] "
        "(remove the rule and add 'fc.weight' to keep to keep its initial value, or set policy.mismatch=skip to leave out every mismatch)"
    )


def test_select_pattern_matching_nothing(convnet):
    cfg = recipe(convnet, rules=[{"from": "pretrained", "select": ["conv1", "conv3"]}])
    assert error_of(cfg) == "rules[0].select[1]: 'conv3' matches no tensor of source 'pretrained'"


def test_keep_pattern_matching_nothing(convnet):
    cfg = recipe(convnet, keep=["fc1", "fc2", "fc3", "fc4"])
    assert error_of(cfg) == "keep[3]: 'fc4' matches no target tensor"


def test_keep_and_assign_conflict(convnet):
    cfg = recipe(convnet, keep=["conv1", "fc1", "fc2", "fc3"])
    assert error_of(cfg) == "keep[0]: 'conv1.weight' is kept, but rules[0] assigns it"


def test_policy_unused_error(convnet):
    cfg = recipe(convnet, policy={"unused": "error"})
    assert error_of(cfg) == (
        "policy.unused: 6 source tensors read by no rule: pretrained:fc1.{bias,weight}, "
        "pretrained:fc2.{bias,weight}, pretrained:fc3.{bias,weight}"
    )


def test_target_argument_typo(convnet):
    cfg = recipe(convnet, target={"_target_": "torchgraft.examples.ConvNet", "num_clases": 5})
    assert error_of(cfg, TargetError) == (
        "target.num_clases: torchgraft.examples.ConvNet has no argument 'num_clases' (did you mean 'num_classes'?)"
    )


class _NeedsData(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))
        self.steps = int(self.scale.sum().item())  # data-dependent: impossible on meta


def test_model_that_cannot_be_built_on_meta(convnet, monkeypatch):
    import sys
    import types

    module = types.ModuleType("needs_data_mod")
    module.NeedsData = _NeedsData
    monkeypatch.setitem(sys.modules, "needs_data_mod", module)
    cfg = recipe(convnet, target={"_target_": "needs_data_mod.NeedsData"})
    message = error_of(cfg, TargetError)
    assert message.startswith("target: cannot build needs_data_mod.NeedsData on the meta device: ")
    assert "meta" in message.split("device: ", 1)[1]


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"conv1.weight": torch.zeros(1), "x": _Boom()}, f, pickle_module=pickle)
    message = error_of(recipe(str(path)), SourceError)
    assert message.startswith(f"sources.pretrained: {path}: refused to unpickle ")
    assert message.endswith("torchgraft never runs code from a checkpoint")
    assert not (tmp_path / "pwned").exists()


def test_dry_run_reads_no_tensor_data(tmp_path, convnet):
    """Planning works from the header alone: a file whose data is garbage still plans."""
    data = bytearray(open(convnet, "rb").read())
    header_end = 8 + int.from_bytes(data[:8], "little")
    data[header_end:] = os.urandom(len(data) - header_end)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(data))
    plan = torchgraft.plan(recipe(str(garbage)))
    assert [e.key for e in plan.entries if not e.kept] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]


def test_nothing_is_written_when_execution_is_refused(tmp_path, convnet):
    plan = torchgraft.plan(recipe(convnet))
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    out.write_bytes(b"keep me")
    with pytest.raises(Exception) as info:
        torchgraft.execute(plan, out)
    assert str(info.value) == f"output.path: {out}: already exists (set output.overwrite=true to replace it)"
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"]


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, convnet, monkeypatch):
    plan = torchgraft.plan(recipe(convnet))
    out = tmp_path / "out" / "model.safetensors"
    units = importlib.import_module("torchgraft.execution.units")

    calls = {"n": 0}
    real = units.unchanged  # asked for every entry, copied or computed

    def fail_midway(entry, readers):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(entry, readers)

    monkeypatch.setattr(units, "unchanged", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        torchgraft.execute(plan, out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
