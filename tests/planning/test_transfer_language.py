"""The transfer language end to end, on small checkpoints written by the tests: index
arithmetic, regions (fuse and split), multi-source merges, selection by module type
and kind, transforms that read initial values; and the exact text of every error the
language promises."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import torchgraft
from torchgraft.core.errors import GraftError, PlanError
from torchgraft.examples import SequentialNet
from torchgraft.examples.checkpoints import example_path
from torchgraft.examples.encoders import TextEncoder
from torchgraft.plans.codec import from_json
from torchgraft.recipe.source import bundled_recipes

PROBE = {"_target_": "torchgraft.examples.LinearProbe", "in_features": 12, "num_classes": 4}
SEQ = {"_target_": "torchgraft.examples.SequentialNet", "num_classes": 5, "hidden": 32}


@pytest.fixture
def save(tmp_path):
    """``save(name, tensors)`` writes a safetensors checkpoint and returns its path."""

    def write(name: str, tensors: dict[str, torch.Tensor]) -> str:
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return str(path)

    return write


@pytest.fixture
def run(tmp_path):
    """``run(recipe)`` plans and executes a recipe mapping; returns (plan, output tensors)."""
    count = iter(range(100))

    def go(recipe: dict):
        plan = torchgraft.plan(recipe)
        return plan, load_file(torchgraft.execute(plan, tmp_path / f"out{next(count)}.safetensors"))

    return go


def model_state(make, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in make().state_dict().items()}


def initial(spec: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    from torchgraft.core.target import initial_state
    return initial_state(spec, seed)


def plan_error(recipe: dict) -> str:
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe)
    return str(err.value)


# --- index arithmetic ------------------------------------------------------------------------

def test_frankenmerge_stacks_two_models_with_an_offset(save, run):
    a, b = model_state(lambda: TextEncoder(depth=2), 1), model_state(lambda: TextEncoder(depth=2), 2)
    _, out = run({"sources": {"a": save("a", a), "b": save("b", b)},
                  "target": {"_target_": "torchgraft.examples.encoders.TextEncoder", "depth": 4},
                  "rules": [{"from": "a"},
                            {"from": "b", "select": "blocks", "rename": {"blocks.{i}": "blocks.{i+2}"}}]})
    for key, value in out.items():
        if key.startswith("blocks.") and int(key.split(".")[1]) >= 2:
            i = int(key.split(".")[1])
            assert torch.equal(value, b[key.replace(f"blocks.{i}.", f"blocks.{i - 2}.", 1)]), key
        else:
            assert torch.equal(value, a[key]), key


def test_every_other_layer_bulk_form_equals_the_bundled_explicit_form(run):
    teacher = {"teacher": example_path("encoder_12")}
    student = {"_target_": "torchgraft.examples.encoders.TextEncoder", "depth": 6}
    _, bulk = run({"sources": teacher, "target": student, "rules": [
        {"from": "teacher", "select": ["embed", "pos_embed", "norm", "head", "blocks.{0,2,4,6,8,10}"],
         "rename": {"blocks.{i}": "blocks.{i//2}"}}]})
    _, explicit = run(str(bundled_recipes() / "drop_layers.yaml"))
    assert bulk.keys() == explicit.keys() and all(torch.equal(bulk[k], explicit[k]) for k in bulk)


def test_shift_layers_down_with_a_range(save, run):
    deep = model_state(lambda: TextEncoder(depth=4), 3)
    _, out = run({"sources": {"deep": save("deep", deep)},
                  "target": {"_target_": "torchgraft.examples.encoders.TextEncoder", "depth": 2},
                  "rules": [{"from": "deep", "select": ["blocks.{2..3}", "embed", "pos_embed", "norm", "head"],
                             "rename": {"blocks.{i}": "blocks.{i-2}"}}]})
    assert torch.equal(out["blocks.0.attn.qkv.weight"], deep["blocks.2.attn.qkv.weight"])
    assert torch.equal(out["blocks.1.mlp.fc2.bias"], deep["blocks.3.mlp.fc2.bias"])


# --- regions: fuse and split --------------------------------------------------------------------

def test_a_partly_fused_matrix_says_which_rows_stay_initial(save, run):
    spec = {"_target_": "torchgraft.examples.bert.FusedQKVClassifier", "layers": 1}
    q, k = torch.randn(32, 32), torch.randn(32, 32)
    plan, out = run({"sources": {"s": save("s", {"q": q, "k": k})}, "target": spec,
                     "rules": [{"to": "blocks.0.qkv.weight[0:32]", "from": "s:q"},
                               {"to": "blocks.0.qkv.weight[32:64]", "from": "s:k"}],
                     "policy": {"unassigned": "keep"}})
    entry = next(e for e in plan.entries if e.key == "blocks.0.qkv.weight")
    assert entry.uncovered == ("[64:]",) and entry.needs_initial
    assert "[64:] keep" in torchgraft.render(plan)
    assert torch.equal(out["blocks.0.qkv.weight"][:32], q) and torch.equal(out["blocks.0.qkv.weight"][32:64], k)
    assert torch.equal(out["blocks.0.qkv.weight"][64:], initial(spec)["blocks.0.qkv.weight"][64:])


def test_split_a_fused_matrix_through_source_regions(save, run):
    qkv = torch.randn(12, 4)
    _, out = run({"sources": {"s": save("s", {"attn.qkv.weight": qkv})}, "target": None, "rules": [
        {"to": f"attn.{name}.weight", "from": f"s:attn.qkv.weight[{4 * i}:{4 * i + 4}]"}
        for i, name in enumerate(["q", "k", "v"])]})
    assert [out[f"attn.{n}.weight"].tolist() for n in "qkv"] == [qkv[0:4].tolist(), qkv[4:8].tolist(), qkv[8:].tolist()]


# --- merges ----------------------------------------------------------------------------------

def test_explicit_weighted_merge_is_a_model_soup(save, run):
    a, b = model_state(lambda: nn.Linear(12, 4), 1), model_state(lambda: nn.Linear(12, 4), 2)
    plan, out = run({"sources": {"a": save("a", a), "b": save("b", b)}, "target": PROBE, "keep": ["norm"],
                     "rules": [{"to": f"fc.{p}", "from": [f"a:{p}", f"b:{p}"], "merge": {"weights": [0.7, 0.3]}}
                               for p in ("weight", "bias")]})
    for p in ("weight", "bias"):
        torch.testing.assert_close(out[f"fc.{p}"], 0.7 * a[p] + 0.3 * b[p])
    assert "weights [0.7, 0.3](a:weight + b:weight)" in torchgraft.render(plan)


def test_bulk_merge_with_weights_then_a_transform(save, run):
    a, b = {"w": torch.randn(3, 5), "n": torch.tensor(10)}, {"w": torch.randn(3, 5), "n": torch.tensor(13)}
    _, out = run({"sources": {"a": save("a", a), "b": save("b", b)}, "target": None, "rules": [
        {"from": ["a", "b"], "select": "w", "merge": {"weights": [0.25, 0.75]}, "transform": "transpose"},
        {"from": ["a", "b"], "select": "n", "merge": "mean"}]})
    torch.testing.assert_close(out["w"], (0.25 * a["w"] + 0.75 * b["w"]).T)
    assert out["n"].dtype == torch.int64 and out["n"].item() == 12  # 11.5, rounded half to even


# --- selection by module type and kind ---------------------------------------------------------

@pytest.fixture
def sequential(save):
    return save("seq", model_state(lambda: SequentialNet(num_classes=5, hidden=32), 7))


def assigned(plan) -> list[str]:
    return [e.key for e in plan.entries if not e.kept]


@pytest.mark.parametrize("types, kind, expected", [
    (["torch.nn.Conv2d"], None, ["sequential.0.weight", "sequential.0.bias", "sequential.3.weight", "sequential.3.bias"]),
    (["torch.nn.modules.conv.Conv2d"], None,
     ["sequential.0.weight", "sequential.0.bias", "sequential.3.weight", "sequential.3.bias"]),
    (["torch.nn.BatchNorm2d"], "buffers", [f"sequential.{i}.{b}" for i in (1, 4)
                                            for b in ("running_mean", "running_var", "num_batches_tracked")]),
    (["torch.nn.modules.batchnorm._BatchNorm"], "parameters", [f"sequential.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")]),
    (None, "buffers", [f"sequential.{i}.{b}" for i in (1, 4) for b in ("running_mean", "running_var", "num_batches_tracked")]),
    (["torch.nn.Conv2d", "torch.nn.Linear"], "parameters",
     [f"sequential.{i}.{p}" for i in (0, 3, 8) for p in ("weight", "bias")]),
])
def test_select_by_module_type_and_kind(sequential, types, kind, expected):
    rule = {"from": "s", **({"types": types} if types else {}), **({"kind": kind} if kind else {})}
    plan = torchgraft.plan({"sources": {"s": sequential}, "target": SEQ, "rules": [rule], "policy": {"unassigned": "keep"}})
    assert assigned(plan) == expected


class WideConv(nn.Conv2d):
    """A Conv2d subclass, as timm's Conv2dSame is: selecting torch.nn.Conv2d takes it too."""


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = WideConv(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 1)
        self.n = nn.LayerNorm(4)


def test_types_match_subclasses(save):
    source = model_state(TwoConvs, 1)
    model = TwoConvs()
    norm = model.n.weight.detach().clone()
    plan = torchgraft.load_into(model, {"sources": {"s": save("two", source)}, "target": None,
                                        "rules": [{"from": "s", "types": ["torch.nn.Conv2d"]}], "keep": ["n"]})
    assert assigned(plan) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert torch.equal(model.a.weight, source["a.weight"]) and torch.equal(model.n.weight, norm)


@pytest.mark.parametrize("rule, message", [
    ({"types": ["torch.nn.Conv3x"]}, "rules[0].types[0]: cannot import 'torch.nn.Conv3x' (write the full path, e.g. torch.nn.Conv2d)"),
    ({"types": ["nn.Conv2d"]}, "rules[0].types[0]: cannot import 'nn.Conv2d' (write the full path, e.g. torch.nn.Conv2d)"),
    ({"types": ["torch.nn.Conv2d", "torch.Tensor"]}, "rules[0].types[1]: 'torch.Tensor' is not a torch.nn.Module subclass"),
    ({"types": ["torch.nn.LayerNorm"]}, "rules[0].types[0]: 'torch.nn.LayerNorm' holds no tensor of the target"),
    ({"types": ["torch.nn.Conv2d"], "kind": "buffers"}, "rules[0].types[0]: 'torch.nn.Conv2d' holds no buffer of the target"),
    ({"types": ["torch.nn.Linear"], "select": "sequential.0"},
     "rules[0]: no tensor of source 's' lands on a target tensor that types/kind select"),
])
def test_type_selection_errors(sequential, rule, message):
    assert plan_error({"sources": {"s": sequential}, "target": SEQ, "rules": [{"from": "s", **rule}],
                       "policy": {"unassigned": "keep"}}) == message


def test_type_selection_needs_a_model_class(sequential):
    for recipe in ({"target": None}, {"target": None, "base": "s"}):
        message = plan_error({"sources": {"s": sequential}, "rules": [{"from": "s", "kind": "parameters"}], **recipe})
        assert message == "rules[0].kind: selecting by module type or kind needs a target model class"


def test_kind_when_the_target_has_none(save):
    message = plan_error({"sources": {"s": save("p", model_state(lambda: nn.Linear(12, 4), 1))}, "target": PROBE,
                          "rules": [{"from": "s", "kind": "buffers"}], "policy": {"unassigned": "keep"}})
    assert message == "rules[0].kind: the target has no buffers"


# --- transforms that read initial values ----------------------------------------------------------

def test_pad_rows_init_into_a_region(save, run):
    small = torch.randn(2, 12)
    spec = {"_target_": "torchgraft.examples.LinearProbe", "in_features": 20, "num_classes": 4}
    plan, out = run({"sources": {"s": save("s", {"w": small})}, "target": spec, "policy": {"unassigned": "keep"},
                     "rules": [{"to": "fc.weight[:, :12]", "from": "s:w", "transform": {"pad_rows": {"to": 4}}}]})
    init = initial(spec)["fc.weight"]
    assert torch.equal(out["fc.weight"][:2, :12], small)
    assert torch.equal(out["fc.weight"][2:], init[2:]) and torch.equal(out["fc.weight"][:, 12:], init[:, 12:])
    assert next(e for e in plan.entries if e.key == "fc.weight").uncovered == ("[:, 12:]",)


def test_pad_rows_init_takes_new_rows_from_the_base(save, run):
    base = {"emb.weight": torch.randn(6, 3), "other": torch.randn(2)}
    old = torch.randn(4, 3)
    plan, out = run({"sources": {"base": save("base", base), "old": save("old", {"emb.weight": old})},
                     "target": None, "base": "base", "keep": ["other"],
                     "rules": [{"from": "old", "transform": {"pad_rows": {"to": 6, "fill": "init"}}}]})
    assert torch.equal(out["emb.weight"], torch.cat([old, base["emb.weight"][4:]]))
    assert torch.equal(out["other"], base["other"])
    assert [u.key for u in plan.unused] == []  # the base's emb.weight is read for its new rows


def test_pad_rows_mean_grows_a_vocabulary(save, run):
    old = torch.randn(5, 3)
    _, out = run({"sources": {"s": save("s", {"tok.weight": old})}, "target": None,
                  "rules": [{"from": "s", "transform": [{"pad_rows": {"to": 8, "fill": "mean"}}]}]})
    assert torch.equal(out["tok.weight"][:5], old)
    torch.testing.assert_close(out["tok.weight"][5:], old.mean(0, keepdim=True).expand(3, 3))


def test_plans_with_new_transforms_round_trip_through_json(save, tmp_path):
    recipe = str(bundled_recipes() / "grow_classes.yaml")
    plan = torchgraft.plan(recipe)
    again = from_json(plan.to_json())
    assert again.to_json() == plan.to_json() and torchgraft.render(again) == torchgraft.render(plan)
    first = load_file(torchgraft.execute(plan, tmp_path / "a.safetensors"))
    second = load_file(torchgraft.execute(again, tmp_path / "b.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)


# --- the errors the language promises, word for word ---------------------------------------------

@pytest.fixture
def sources(save):
    torch.manual_seed(0)
    a = save("a", {"layers.0.w": torch.randn(4, 3), "layers.1.w": torch.randn(4, 3), "layers.x.w": torch.randn(4, 3),
                   "fc.weight": torch.randn(4, 12), "fc.bias": torch.randn(4)})
    b = save("b", {"fc.weight": torch.randn(4, 20), "fc.bias": torch.randn(4).double()})
    return {"a": a, "b": b}


ENCODER2 = {"_target_": "torchgraft.examples.encoders.TextEncoder", "depth": 2}
ERRORS = [
    # arithmetic producing a negative or a non-integer index
    ({"target": None, "rules": [{"from": "a", "select": "layers.{0..1}", "rename": {"layers.{i}": "layers.{i-1}"}}]},
     "rules[0].rename: a:layers.0.w: {i-1} gives -1 for i=0: indices must be non-negative integers"),
    ({"target": ENCODER2, "rules": [{"to": "blocks.{j}.norm1.weight", "from": "t:blocks.{j-1}.norm1.weight"}],
      "sources": {"t": "${example:encoder_12}"}},
     "rules[0].from: {j-1} gives -1 for j=0: indices must be non-negative integers "
     "(filling 't:blocks.{j-1}.norm1.weight' for blocks.0.norm1.weight)"),
    ({"target": None, "rules": [{"from": "a", "select": "layers", "rename": {"layers.{i}": "blocks.{i*2}"}}]},
     "rules[0].rename: a:layers.x.w: {i*2} needs an integer but i='x'"),
    ({"target": None, "rules": [{"to": "blocks.{i-1}.w", "from": "a:layers.{i}.w"}]},  # the first key in file order
     "rules[0].to: {i-1} gives -1 for i=0: indices must be non-negative integers (filling 'blocks.{i-1}.w' for a:layers.0.w)"),
    ({"target": None, "rules": [{"to": "blocks.{i+1}.w", "from": "a:layers.{i}.w"}]},
     "rules[0].to: {i+1} needs an integer but i='x' (filling 'blocks.{i+1}.w' for a:layers.x.w)"),
    # two rules writing overlapping regions
    ({"target": PROBE, "keep": ["norm", "fc.bias"], "rules": [{"to": "fc.weight[:, 0:8]", "from": "a:fc.weight[:, 0:8]"},
                                                             {"to": "fc.weight[:, 6:12]", "from": "a:fc.weight[:, 6:12]"}]},
     "rules[1].to: 'fc.weight[:, 6:]' overlaps 'fc.weight[:, :8]', which rules[0] already assigns"),
    ({"target": PROBE, "keep": ["norm", "fc.bias"], "rules": [{"from": "a", "select": "fc.weight"},
                                                             {"to": "fc.weight[0]", "from": "a:fc.weight[1]"}]},
     "rules[1].to: 'fc.weight[0]' overlaps 'fc.weight', which rules[0] already assigns"),
    # a transform whose output does not fit the target
    ({"target": PROBE, "policy": {"unassigned": "keep"}, "rules": [{"to": "fc.weight", "from": "a:fc.weight", "transform": "transpose"}]},
     "rules[0].to: a:fc.weight [4,12] becomes [12,4] after transpose, but fc.weight has shape [4,12] "
     "(remove the rule and add 'fc.weight' to keep to keep its initial value, or set policy.mismatch=skip to leave out every mismatch)"),
    ({"target": PROBE, "policy": {"unassigned": "keep"},
      "rules": [{"from": "a", "select": "fc", "transform": {"pad_rows": {"to": 6, "fill": "zeros"}}}]},
     "rules[0].select: a:fc.bias [4] becomes [6] after pad_rows(to=6, fill=zeros), but fc.bias has shape [4] "
     "(add 'fc.bias' to rules[0].exclude and 'fc.bias' to keep to keep its initial value, or set policy.mismatch=skip to leave out every mismatch)"),
    ({"target": None, "rules": [{"to": "pos", "from": "a:fc.weight", "transform": ["transpose", {"interpolate": {"size": [3, 3]}}]}]},
     "rules[0].transform[1]: a:fc.weight: interpolate: 12 positions after 0 prefix tokens do not form a square grid "
     "(set prefix_tokens, or old_size for a non-square grid)"),
    ({"target": None, "rules": [{"to": "x", "from": "a:fc.weight", "transform": ["transpose", {"pad_rows": {"to": 16}}]}]},
     "rules[0].transform[1]: pad_rows(to=16, fill=init) needs the target's initial values (set target, or base)"),
    # merge sources with different shapes or dtypes
    ({"target": PROBE, "policy": {"unassigned": "keep"},
      "rules": [{"to": "fc.weight", "from": ["a:fc.weight", "b:fc.weight"], "merge": "mean"}]},
     "rules[0].from: cannot merge a:fc.weight [4,12] float32 with b:fc.weight [4,20] float32 "
     "(merged tensors must have the same shape and dtype)"),
    ({"target": None, "rules": [{"from": ["a", "b"], "select": "fc.bias", "merge": {"weights": [0.5, 0.5]}}]},
     "rules[0].from: cannot merge a:fc.bias [4] float32 with b:fc.bias [4] float64 "
     "(merged tensors must have the same shape and dtype)"),
    ({"target": None, "rules": [{"from": ["a", "b"], "merge": "mean"}]},
     "rules[0].from: a:layers.0.w -> 'layers.0.w' has no counterpart in 'b' (merged sources must provide the same tensors)"),
    # an unbound template variable in a replacement
    ({"target": None, "rules": [{"from": "a", "rename": {"layers.{i}": "blocks.{j}"}}]},
     "rules[0].rename.layers.{i}: {j} is not bound (bound: i)"),
    ({"target": ENCODER2, "sources": {"t": "${example:encoder_12}"},
      "rules": [{"to": "blocks.{i}.norm1.weight", "from": "t:blocks.{j}.norm1.weight"}]},
     "rules[0].from: {j} in 't:blocks.{j}.norm1.weight' is not bound ('blocks.{i}.norm1.weight' binds i)"),
    ({"target": None, "rules": [{"to": "blocks.{j*2}.w", "from": "a:layers.{i}.w"}]},
     "rules[0].to: {j} in 'blocks.{j*2}.w' is not bound ('a:layers.{i}.w' binds i)"),
]


@pytest.mark.parametrize("recipe, message", ERRORS, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(ERRORS)])
def test_language_errors(sources, recipe, message):
    with pytest.raises(PlanError) as err:
        torchgraft.plan({"sources": sources, **recipe})
    assert str(err.value) == message
