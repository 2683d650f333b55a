"""``target_init: per_module``: kept tensors from each module's own reset_parameters,
seeded by the target seed and the module's name, without building the whole model."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import torchgraft
from torchgraft.core.errors import TargetError
from torchgraft.execution import initial
from torchgraft.execution.initial import advice, module_seed
from torchgraft.plans.codec import from_json


class Net(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(3)])
        self.norm = nn.LayerNorm(width)
        self.bn = nn.BatchNorm1d(width)
        self.attn = nn.MultiheadAttention(width, 2)  # has _reset_parameters, not reset_parameters
        self.head = nn.Linear(width, 2)


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(4))  # no reset_parameters


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.scale = Scale()


class Positions(nn.Linear):
    def __init__(self):
        super().__init__(4, 4)
        self.register_buffer("position_ids", torch.arange(4))  # set in __init__ only


class WithPositions(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.pos = Positions()


class Big(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(20_000, 16_000)  # 1.2 GiB of float32, on the meta device only
        self.head = nn.Linear(4, 2)


@pytest.fixture(autouse=True)
def models(monkeypatch):
    module = types.ModuleType("scale_init_models")
    for cls in (Net, WithScale, WithPositions, Big):
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "scale_init_models", module)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "head.safetensors"
    save_file({"head.weight": torch.full((2, 4), 0.5), "head.bias": torch.zeros(2)}, str(path))
    return path


def recipe(source, cls="Net", keep=("embed", "blocks", "norm", "bn", "attn"), **fields):
    return {"sources": {"src": str(source)}, "target": {"_target_": f"scale_init_models.{cls}"},
            "rules": [{"from": "src"}], "keep": list(keep), "target_init": "per_module", **fields}


def by_hand(cls, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The README's recipe for one module's per_module values."""
    with torch.device("meta"):
        model = cls()
    module = model.get_submodule(name)
    module.to_empty(device="cpu", recurse=False)
    torch.manual_seed(module_seed(seed, name))
    reset = getattr(module, "reset_parameters", None) or module._reset_parameters
    reset()
    own = {**module._parameters, **module._buffers}
    return {f"{name}.{k}": v.detach() for k, v in own.items() if v is not None}


def test_module_seed_is_the_documented_hash():
    import hashlib

    digest = hashlib.sha256(b"7:blocks.1").digest()
    assert module_seed(7, "blocks.1") == int.from_bytes(digest[:8], "little") & (2**63 - 1)
    assert module_seed(7, "blocks.1") != module_seed(7, "blocks.2") != module_seed(8, "blocks.2")


def test_values_are_each_modules_reset_parameters_under_its_own_seed(tmp_path, source):
    rng = torch.random.get_rng_state()
    plan = torchgraft.plan(recipe(source, target_seed=3))
    got = load_file(str(torchgraft.execute(plan, tmp_path / "out.safetensors")))
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG is untouched
    expected = {}
    for name in ("embed", "blocks.0", "blocks.1", "blocks.2", "norm", "bn", "attn", "attn.out_proj"):
        expected.update(by_hand(Net, name, seed=3))
    assert set(got) == set(expected) | {"head.weight", "head.bias"}
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert torch.equal(got["head.weight"], torch.full((2, 4), 0.5))
    assert got["bn.running_var"].tolist() == [1.0] * 4 and got["bn.num_batches_tracked"].item() == 0
    # Not plain construction: other random draws (same initializers).
    torch.manual_seed(3)
    plain = Net().state_dict()
    assert not torch.equal(got["blocks.0.weight"], plain["blocks.0.weight"])
    assert torch.equal(got["norm.weight"], plain["norm.weight"])  # deterministic initializers agree


def test_a_modules_values_do_not_depend_on_what_else_is_kept(tmp_path, source):
    everything = load_file(str(torchgraft.execute(torchgraft.plan(recipe(source)), tmp_path / "a.safetensors")))
    one = recipe(source, keep=["blocks.1"], policy={"unassigned": "keep"})
    again = load_file(str(torchgraft.execute(torchgraft.plan(one), tmp_path / "b.safetensors")))
    assert torch.equal(everything["blocks.1.weight"], again["blocks.1.weight"])


def test_only_the_modules_of_kept_tensors_are_made_real_one_at_a_time(tmp_path, source, monkeypatch):
    made, alive = [], []
    materialize = initial.PerModule._materialize

    def spy_materialize(self, name, module, key):
        made.append(name)
        real = [n for n, m in self.model.named_modules() if any(not p.is_meta for p in m.parameters(recurse=False))]
        alive.append(real)
        return materialize(self, name, module, key)

    monkeypatch.setattr(initial.PerModule, "_materialize", spy_materialize)
    plan = torchgraft.plan(recipe(source, keep=["blocks.0", "bn"], policy={"unassigned": "keep"}))
    assert plan.target.init == "per_module"
    torchgraft.execute(plan, tmp_path / "out.safetensors")
    # policy.unassigned=keep keeps everything no rule assigns: every module but head.
    assert made == ["embed", "blocks.0", "blocks.1", "blocks.2", "norm", "bn", "attn", "attn.out_proj"]
    assert all(real == [] for real in alive)  # the previous module was released first


def test_a_module_without_reset_parameters_fails_at_planning(source):
    with pytest.raises(TargetError) as e:
        torchgraft.plan(recipe(source, cls="WithScale", keep=["scale"]))
    assert str(e.value) == (
        "target_init: per_module cannot initialize 'scale.gain': its module 'scale' "
        f"({__name__}.Scale) has no reset_parameters() (set target_init=full, or take it from a base checkpoint)")


def test_a_tensor_that_reset_parameters_does_not_set_fails_before_publishing(tmp_path, source):
    plan = torchgraft.plan(recipe(source, cls="WithPositions", keep=["pos"]))
    with pytest.raises(TargetError) as e:
        torchgraft.execute(plan, tmp_path / "out.safetensors")
    assert str(e.value) == ("target_init: per_module cannot initialize 'pos.position_ids': "
                            f"{__name__}.Positions.reset_parameters() does not set it (set target_init=full)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.safetensors"]


def test_the_plan_records_the_mode_only_when_it_is_not_the_default(source):
    plan = torchgraft.plan(recipe(source))
    data = json.loads(plan.to_json())
    assert data["target"]["init"] == "per_module"
    assert from_json(plan.to_json()) == plan and from_json(plan.to_json()).sha256 == plan.sha256
    assert "target  scale_init_models.Net()  seed 0 (target_init=per_module)\n" in torchgraft.render(plan)
    full = torchgraft.plan({**recipe(source), "target_init": "full"})
    assert "init" not in json.loads(full.to_json())["target"] and full.target.init == "full"
    assert full.sha256 != plan.sha256


def test_the_dry_run_suggests_per_module_for_a_large_target(source):
    big = {**recipe(source, cls="Big", keep=["proj"]), "target_init": "full"}
    assert advice(torchgraft.plan(big)) == (
        "note: the 2 kept tensors (1.2 GiB) take their initial values from building all of scale_init_models.Big "
        "(1.2 GiB) on the CPU; target_init=per_module builds only the modules they belong to "
        "(same initializers, other random draws: see docs/large-checkpoints.md)")
    assert advice(torchgraft.plan({**big, "target_init": "per_module"})) is None
    assert advice(torchgraft.plan({**recipe(source), "target_init": "full"})) is None  # small


def test_graft_prints_the_suggestion(graft, tmp_path, source):
    (tmp_path / "bigmodel.py").write_text(
        "from torch import nn\n\n\nclass Big(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.proj = nn.Linear(20_000, 16_000)\n        self.head = nn.Linear(4, 2)\n")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "big.yaml").write_text(
        f"# graft recipe=big\nsources:\n  src: {source}\ntarget:\n  _target_: bigmodel.Big\n"
        "rules:\n  - from: src\nkeep: [proj]\n")
    result = graft("recipe=big", "dry_run=true", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert ("note: the 2 kept tensors (1.2 GiB) take their initial values from building all of bigmodel.Big "
            "(1.2 GiB) on the CPU; target_init=per_module") in result.stderr
