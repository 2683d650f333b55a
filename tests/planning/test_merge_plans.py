"""Merge methods at plan time: what the plan says, gradients over layers, and every
plan-time error with its exact message (nothing written)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchgraft.api import execute, plan, render
from torchgraft.core.errors import PlanError, RecipeError

LAYERS = 4


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge_plans")
    g = torch.Generator().manual_seed(3)
    out = {}
    for name in ("base_model", "math", "code", "third"):
        state = {f"layers.{i}.mlp.fc1.weight": torch.randn(16, 8, generator=g) for i in range(LAYERS)}
        state["embed.weight"] = torch.randn(10, 8, generator=g)
        out[name] = str(root / f"{name}.safetensors")
        save_file(state, out[name])
    odd = {k: v.to(torch.bfloat16) for k, v in load_file(out["third"]).items()}
    out["half"] = str(root / "half.safetensors")
    save_file(odd, out["half"])
    small = {k: v[:4] for k, v in load_file(out["third"]).items()}
    out["small"] = str(root / "small.safetensors")
    save_file(small, out["small"])
    return out


def recipe(paths, rules):
    return {"sources": dict(paths), "target": None, "rules": rules, "policy": {"unused": "ignore"}}


def lines(the_plan) -> list[str]:
    return [line for line in render(the_plan).splitlines() if "←" in line]


def test_plan_text_says_what_each_merge_does(paths):
    the_plan = plan(recipe(paths, [{"from": ["math", "code"],
                                    "merge": {"method": "ties", "base": "base_model", "weights": [0.6, 0.4], "density": 0.5}}]))
    assert lines(the_plan) == [
        "embed.weight                  [10,8]  f32  ← ties(base=base_model, density=0.5, weights=[0.6, 0.4]) of "
        "math:embed.weight, code:embed.weight  (rules[0])",
        "layers.{0..3}.mlp.fc1.weight  [16,8]  f32  ← ties(base=base_model, density=0.5, weights=[0.6, 0.4]) of "
        "math:layers.{0..3}.mlp.fc1.weight, code:layers.{0..3}.mlp.fc1.weight  (rules[0])",
    ]
    piece = the_plan.entries[0].pieces[0]
    assert piece.merge == {"method": "ties", "base": "base_model", "density": 0.5, "int8_mask": False, "lambda": 1.0,
                           "normalize": True, "rescale": False, "weights": [0.6, 0.4]}
    assert [r.source for r in piece.reads] == ["math", "code", "base_model"]


def test_plan_text_of_slerp_and_dare(paths):
    slerp = plan(recipe(paths, [{"from": ["math", "code"], "merge": {"method": "slerp", "t": 0.3}}]))
    assert lines(slerp)[0] == "embed.weight                  [10,8]  f32  ← slerp(t=0.3) of math:embed.weight, code:embed.weight  (rules[0])"
    dare = plan(recipe(paths, [{"from": ["math", "code", "third"],
                                "merge": {"method": "dare_ties", "base": "base_model", "density": 0.4, "seed": 3}}]))
    assert lines(dare)[0] == ("embed.weight                  [10,8]  f32  ← dare_ties(base=base_model, density=0.4, seed=3) of "
                              "math:embed.weight, code:embed.weight, third:embed.weight  (rules[0])")


def test_a_gradient_resolves_per_layer_and_the_plan_shows_each_value(paths, tmp_path):
    the_plan = plan(recipe(paths, [{"from": ["math", "code"], "merge": {"method": "slerp", "t": {"gradient": [0, 1]}}}]))
    shown = lines(the_plan)
    assert [line.split("←")[1].split(" of ")[0] for line in shown] == [
        " slerp(t=0.0)", " slerp(t=0.0)", " slerp(t=0.333333)", " slerp(t=0.666667)", " slerp(t=1.0)"]
    execute(the_plan, tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    a, b = load_file(paths["math"]), load_file(paths["code"])
    key = "layers.{}.mlp.fc1.weight"
    assert torch.equal(out[key.format(0)], a[key.format(0)])
    torch.testing.assert_close(out[key.format(3)], b[key.format(3)], rtol=0, atol=1e-6)
    assert torch.equal(out["embed.weight"], a["embed.weight"])  # outside the layers: t = 0, as in mergekit
    for i, t in ((1, 1 / 3), (2, 2 / 3)):
        x, y = a[key.format(i)], b[key.format(i)]
        theta = math.acos(float(x.flatten() @ y.flatten() / (x.norm() * y.norm())))
        expected = (math.sin((1 - t) * theta) * x + math.sin(t * theta) * y) / math.sin(theta)
        torch.testing.assert_close(out[key.format(i)], expected, rtol=0, atol=1e-5)


def test_gradient_weights_over_an_explicit_rules_variable(paths):
    rules = [{"to": "layers.{i}.mlp.fc1.weight",
              "from": ["math:layers.{i}.mlp.fc1.weight", "code:layers.{i}.mlp.fc1.weight"],
              "merge": {"method": "linear", "weights": [{"gradient": [1.0, 0.0], "over": "i"}, 1.0]}}]
    the_plan = plan({**recipe(paths, rules), "base": "base_model", "keep": ["embed"]})
    weights = [e.pieces[0].merge["weights"] for e in the_plan.entries if e.pieces]
    assert weights == [[1.0, 1.0], [pytest.approx(2 / 3), 1.0], [pytest.approx(1 / 3), 1.0], [0.0, 1.0]]


def error(paths, merge, sources=("math", "code"), kind=PlanError) -> str:
    with pytest.raises(kind) as caught:
        plan(recipe(paths, [{"from": list(sources), "merge": merge}]))
    return str(caught.value)


def test_plan_time_errors(paths):
    assert error(paths, {"method": "slerp", "t": 0.5}, ("math", "code", "third")) == \
        "rules[0].from: slerp merges exactly 2 sources (got 3)"
    assert error(paths, {"method": "model_stock", "base": "base_model"}, ("math",)) == \
        "rules[0].from: model_stock merges at least 2 sources (got 1)"
    assert error(paths, {"method": "ties", "base": "base_model", "density": 0}) == \
        "rules[0].merge.density: must be in (0, 1] (got 0.0)"
    assert error(paths, {"method": "dare_ties", "base": "base_model", "density": {"gradient": [0.5, 1.5]}}) == \
        "rules[0].merge.density: must be in (0, 1] (got 1.5)"
    assert error(paths, {"method": "ties", "density": 0.5}) == (
        "rules[0].merge.base: missing value (ties needs a base: the source whose tensor for the same key "
        "the others are compared with)")
    assert error(paths, {"method": "model_stock", "base": "math"}, ("math", "code")) == \
        "rules[0].merge.base: 'math' is also in from (name the base once, as base)"
    assert error(paths, {"method": "ties", "base": "half"}) == (
        "rules[0].from: cannot merge math:embed.weight [10,8] float32 with half:embed.weight "
        "[10,8] bfloat16 (merged tensors must have the same shape and dtype)")
    assert error(paths, {"method": "task_arithmetic", "base": "small"}) == (
        "rules[0].from: cannot merge math:embed.weight [10,8] float32 with small:embed.weight "
        "[4,8] float32 (merged tensors must have the same shape and dtype)")


def test_recipe_errors(paths):
    assert error(paths, {"method": "tie"}, kind=RecipeError) == \
        "rules[0].merge.method: unknown merge method 'tie' (did you mean 'ties'?)"
    assert error(paths, {"method": "ties", "base": "base_model", "densty": 0.5}, kind=RecipeError) == \
        "rules[0].merge.densty: unknown field for ties (did you mean 'density'?)"
    assert error(paths, {"method": "slerp"}, kind=RecipeError) == "rules[0].merge.t: missing value (slerp needs t)"
    assert error(paths, {"method": "ties", "base": "nope"}, kind=RecipeError) == \
        "rules[0].merge.base: unknown source 'nope' (known: base_model, code, half, math, small, third)"
    assert error(paths, {"method": "linear", "weights": [1.0]}, kind=RecipeError) == \
        "rules[0].merge.weights: expected 2 weights, one per source (got 1)"


def test_nothing_is_written_when_planning_fails(paths, tmp_path):
    with pytest.raises(PlanError):
        execute(plan(recipe(paths, [{"from": ["math"], "merge": {"method": "slerp", "t": 0.5}}])), tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []
