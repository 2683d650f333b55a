"""The seed article's three cases (and a Lightning checkpoint), run through the library
API on the bundled recipes: transferred tensors bit-equal to their source, kept tensors
equal to the target's seeded initialization."""

from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import torchgraft
from torchgraft.examples import ConvNet, LinearProbe, SequentialNet
from torchgraft.examples.checkpoints import example_path
from torchgraft.recipe.source import bundled_recipes


def recipe(name: str):
    return bundled_recipes() / f"{name}.yaml"


def initial(cls, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return cls(**kwargs).state_dict()


def run(name: str, tmp_path):
    plan = torchgraft.plan(recipe(name))
    out = torchgraft.execute(plan, tmp_path / "model.safetensors")
    return plan, load_file(out)


def test_conv_only_transfers_conv_layers_and_keeps_the_head(tmp_path):
    plan, got = run("conv_only", tmp_path)
    source = load_file(example_path("convnet"))
    init = initial(ConvNet, num_classes=5)
    assert list(got) == list(init)  # every target key, in the target's own order
    for key in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(got[key], source[key]), key
    for key in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"):
        assert torch.equal(got[key], init[key]), key
        assert not torch.equal(got[key][:1].flatten()[:3], source[key][:1].flatten()[:3]), key
    assert sorted(u.key for u in plan.unused) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "fc3.bias", "fc3.weight"]


def test_sequential_prefix_takes_the_first_two_entries_with_running_stats(tmp_path):
    _, got = run("sequential_prefix", tmp_path)
    source = torch.load(example_path("sequential"), weights_only=True)
    init = initial(SequentialNet, num_classes=5, hidden=64)
    assert set(got) == set(init)
    for key in got:
        expected = source[key] if key.startswith(("sequential.0.", "sequential.1.")) else init[key]
        assert torch.equal(got[key], expected), key
    assert torch.equal(got["sequential.1.running_mean"], source["sequential.1.running_mean"])


def test_partial_columns_copies_the_region_and_keeps_the_rest(tmp_path):
    plan, got = run("partial_columns", tmp_path)
    source = load_file(example_path("linear_probe"))
    init = initial(LinearProbe, in_features=20, num_classes=4)
    assert torch.equal(got["fc.weight"][:, :10], source["fc.weight"][:, :10])
    assert torch.equal(got["fc.weight"][:, 10:], init["fc.weight"][:, 10:])
    assert torch.equal(got["fc.bias"], source["fc.bias"])
    assert torch.equal(got["norm.weight"], init["norm.weight"])
    entry = next(e for e in plan.entries if e.key == "fc.weight")
    assert entry.uncovered == ("[:, 10:]",)


def test_lightning_checkpoint_strips_the_model_prefix(tmp_path):
    _, got = run("lightning_strip_prefix", tmp_path)
    nested = torch.load(example_path("lightning"), weights_only=True)["state_dict"]
    assert set(got) == {k.removeprefix("model.") for k in nested}
    for key, value in nested.items():
        assert torch.equal(got[key.removeprefix("model.")], value)


def test_output_carries_the_plan_hash_and_loads_strictly(tmp_path):
    plan, _ = run("conv_only", tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata()["torchgraft.plan_sha256"] == plan.sha256
    model = ConvNet(num_classes=5)
    model.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)


def test_load_into_fills_a_live_model_and_leaves_kept_tensors_alone():
    torch.manual_seed(123)
    model = ConvNet(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = torchgraft.load_into(model, recipe("conv_only"))
    source = load_file(example_path("convnet"))
    after = model.state_dict()
    assert torch.equal(after["conv2.weight"], source["conv2.weight"])
    assert torch.equal(after["fc3.weight"], before["fc3.weight"])
    assert sum(1 for e in plan.entries if not e.kept) == 4


def test_planning_is_deterministic():
    first = torchgraft.plan(recipe("partial_columns"))
    second = torchgraft.plan(recipe("partial_columns"))
    assert first.to_json() == second.to_json()
    assert torchgraft.render(first) == torchgraft.render(second)
