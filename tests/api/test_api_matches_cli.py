"""The library API plans exactly what the CLI plans, warns through logging, and
``load_into`` keeps what no rule assigns."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchgraft
from conftest import bundled_recipe_params, graft_in_process
from torchgraft.core.errors import PlanError
from torchgraft.examples import ConvNet
from torchgraft.examples.checkpoints import example_path
from torchgraft.recipe.source import bundled_recipes


@pytest.mark.parametrize("name", bundled_recipe_params())
def test_every_bundled_recipe_plans_cleanly_and_gets_the_cli_s_plan_byte_for_byte(tmp_path, name):
    result = graft_in_process(f"recipe={name}", "dry_run=true", "plan_dir=plans", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # no bundled recipe warns
    assert torchgraft.plan(bundled_recipes() / f"{name}.yaml").to_json() == (tmp_path / "plans" / f"{name}.plan.json").read_text()
    assert not list(tmp_path.rglob("*.safetensors"))  # a dry run writes no checkpoint


def test_a_recipe_name_is_found_as_recipe_name_finds_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert torchgraft.plan("conv_only").sha256 == torchgraft.plan(bundled_recipes() / "conv_only.yaml").sha256
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "conv_only.yaml").write_text((bundled_recipes() / "conv_only.yaml").read_text().replace("num_classes: 5", "num_classes: 7"))
    assert torchgraft.plan("conv_only").recipe["target"]["num_classes"] == 7


def test_a_mapping_takes_the_defaults_too():
    plan = torchgraft.plan({"sources": {"pretrained": example_path("convnet")}, "target": {"_target_": "torchgraft.examples.ConvNet", "num_classes": 5},
                            "rules": [{"from": "pretrained", "select": ["conv1", "conv2"]}], "keep": ["fc1", "fc2", "fc3"]})
    assert plan.sha256 == torchgraft.plan("conv_only").sha256


def _convnet_source(tmp_path: Path) -> str:
    torch.manual_seed(1)
    path = tmp_path / "cnn.safetensors"
    save_file(ConvNet(num_classes=10).state_dict(), path)
    return str(path)


def test_unused_tensors_are_warned_through_logging_unless_a_rule_excludes_them(tmp_path, caplog):
    source = _convnet_source(tmp_path)
    base = {"sources": {"pretrained": source}, "target": None}
    with caplog.at_level(logging.WARNING, logger="torchgraft"):
        torchgraft.plan({**base, "rules": [{"from": "pretrained", "select": ["conv1"]}]})
    assert [r.getMessage() for r in caplog.records] == [
        "warning: 8 source tensors are read by no rule: pretrained:conv2.{bias,weight}, pretrained:fc1.{bias,weight}, "
        "pretrained:fc2.{bias,weight}, pretrained:fc3.{bias,weight} (policy.unused=ignore silences this)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchgraft"):
        plan = torchgraft.plan({**base, "rules": [{"from": "pretrained", "exclude": "fc3"}]})
    assert caplog.records == []
    assert [u.key for u in plan.unused] == ["fc3.bias", "fc3.weight"]  # still listed in the plan
    assert "unused source tensors (2, 3.3 KiB):\n  pretrained:fc3.{bias,weight}\n" in torchgraft.render(plan)


def test_policy_unused_error_stays_strict_about_excluded_tensors(tmp_path):
    source = _convnet_source(tmp_path)
    with pytest.raises(PlanError, match=r"^policy.unused: 2 source tensors read by no rule: pretrained:fc3.\{bias,weight\}$"):
        torchgraft.plan({"sources": {"pretrained": source}, "target": None, "policy": {"unused": "error"},
                         "rules": [{"from": "pretrained", "exclude": "fc3"}]})


def test_load_into_keeps_the_model_s_values_for_tensors_no_rule_assigns(tmp_path):
    source = _convnet_source(tmp_path)
    torch.manual_seed(7)
    model = ConvNet(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torchgraft.load_into(model, {"sources": {"pretrained": source}, "rules": [{"from": "pretrained", "select": "conv1"}]})
    after, old = model.state_dict(), load_file(source)
    assert torch.equal(after["conv1.weight"], old["conv1.weight"])
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("conv1."))
    with pytest.raises(PlanError, match=r"^policy.unassigned: 8 target tensors assigned by no rule"):
        torchgraft.load_into(model, {"sources": {"pretrained": source}, "rules": [{"from": "pretrained", "select": "conv1"}],
                                     "policy": {"unassigned": "error"}})
