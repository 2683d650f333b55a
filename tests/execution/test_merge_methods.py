"""Merge methods equal their definitions (references written here from the papers'/
mergekit's definitions), and mergekit-pytorch's output where mergekit is installed."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REFERENCE_LIBRARIES
from torchgraft.api import execute, plan

SHAPES = {"layers.0.w": (64, 32), "layers.1.w": (64, 32), "layers.2.w": (64, 32), "layers.3.w": (64, 32), "norm": (300,)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and three fine-tunes of it (safetensors), with their tensors."""
    root = tmp_path_factory.mktemp("merge_models")
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    tensors = {"base": base}
    for name in ("a", "b", "c"):
        tensors[name] = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    paths = {}
    for name, state in tensors.items():
        paths[name] = str(root / f"{name}.safetensors")
        save_file(state, paths[name])
    return paths, tensors


def merged(paths, tmp_path, sources, merge, name="out"):
    recipe = {"sources": dict(paths), "target": None, "rules": [{"from": sources, "merge": merge}],
              "policy": {"unused": "ignore"}}
    the_plan = plan(recipe)
    out = tmp_path / f"{name}.safetensors"
    execute(the_plan, out)
    return load_file(str(out)), the_plan


# -- references, from the definitions ------------------------------------------------------


def ref_sparsify(delta, kind, density, gamma=0.01, rescale=False):
    if density >= 1:
        return delta
    flat = delta.flatten()
    n = flat.numel()
    order = sorted(range(n), key=lambda i: -abs(flat[i].item()))  # largest magnitude first
    keep = torch.zeros(n, dtype=torch.bool)
    if kind == "magnitude":
        keep[order[: max(1, int(density * n))]] = True
    else:  # magnitude_outliers: drop the gamma share of largest, keep the next density share
        top, target = int(gamma * n), int(density * n)
        top = min(top, n - target)
        keep[order[top : top + target]] = True
    out = (flat * keep).view(delta.shape)
    if rescale and out.abs().sum() > 1e-7:
        out = out * (delta.abs().sum() / out.abs().sum())
    return out


def ref_task_arithmetic(xs, base, weights, *, kind=None, density=1.0, consensus=False, normalize=False, lam=1.0, gamma=0.01):
    deltas = [w * ref_sparsify(x - base, kind, density, gamma) if kind else w * (x - base) for x, w in zip(xs, weights)]
    if consensus:
        elected = torch.where(sum(deltas) >= 0, 1.0, -1.0)
        agree = [d.sign() == elected for d in deltas]
        mixed = sum(d * a for d, a in zip(deltas, agree))
        divisor = sum(w * a.float() for w, a in zip(weights, agree))
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = sum(deltas), sum(weights)
    if normalize:
        mixed = mixed / divisor
    return base + lam * mixed


def ref_slerp(t, a, b):
    cos = float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def ref_model_stock(xs, base):
    offsets = [(x - base).flatten() for x in xs]
    pairs = [(i, j) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    cos = sum(float(offsets[i] @ offsets[j] / (offsets[i].norm() * offsets[j].norm())) for i, j in pairs) / len(pairs)
    n = len(xs)
    t = n * cos / (1 + (n - 1) * cos)
    return t * sum(xs) / n + (1 - t) * base


CASES = {
    "linear": (["a", "b", "c"], {"method": "linear", "weights": [0.5, 0.3, 0.4]},
               lambda m: sum(w * m[s] for w, s in zip([0.5, 0.3, 0.4], "abc")) / 1.2),
    "linear_unnormalized": (["a", "b"], {"method": "linear", "weights": [0.5, 0.3], "normalize": False},
                            lambda m: 0.5 * m["a"] + 0.3 * m["b"]),
    "task_arithmetic": (["a", "b"], {"method": "task_arithmetic", "base": "base", "weights": [0.7, 0.5], "lambda": 0.8},
                        lambda m: ref_task_arithmetic([m["a"], m["b"]], m["base"], [0.7, 0.5], lam=0.8)),
    "ties": (["a", "b", "c"], {"method": "ties", "base": "base", "weights": [0.6, 0.4, 0.5], "density": 0.5},
             lambda m: ref_task_arithmetic([m["a"], m["b"], m["c"]], m["base"], [0.6, 0.4, 0.5], kind="magnitude",
                                           density=0.5, consensus=True, normalize=True)),
    "breadcrumbs": (["a", "b"], {"method": "breadcrumbs", "base": "base", "density": 0.6, "gamma": 0.05},
                    lambda m: ref_task_arithmetic([m["a"], m["b"]], m["base"], [1.0, 1.0], kind="outliers", density=0.6, gamma=0.05)),
    "breadcrumbs_ties": (["a", "b"], {"method": "breadcrumbs_ties", "base": "base", "density": 0.6, "weights": [0.5, 0.5]},
                         lambda m: ref_task_arithmetic([m["a"], m["b"]], m["base"], [0.5, 0.5], kind="outliers",
                                                       density=0.6, consensus=True)),
    "slerp": (["a", "b"], {"method": "slerp", "t": 0.3}, lambda m: ref_slerp(0.3, m["a"], m["b"])),
    "model_stock": (["a", "b", "c"], {"method": "model_stock", "base": "base"},
                    lambda m: ref_model_stock([m["a"], m["b"], m["c"]], m["base"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_method_equals_its_definition(models, tmp_path, case):
    paths, tensors = models
    sources, merge, reference = CASES[case]
    out, _ = merged(paths, tmp_path, sources, merge)
    for key in SHAPES:
        expected = reference({name: state[key] for name, state in tensors.items()})
        torch.testing.assert_close(out[key], expected, rtol=0, atol=1e-5, msg=f"{case} {key}")


# -- DARE -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One 1M-element tensor: a base and a fine-tune whose every delta is non-zero."""
    root = tmp_path_factory.mktemp("dare")
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1000, 1000, generator=g)
    tuned = base + torch.rand(1000, 1000, generator=g) + 0.5
    paths = {"base": str(root / "base.safetensors"), "tuned": str(root / "tuned.safetensors"),
             "other": str(root / "other.safetensors")}
    save_file({"w": base}, paths["base"])
    save_file({"w": tuned}, paths["tuned"])
    save_file({"w": base - torch.rand(1000, 1000, generator=g)}, paths["other"])
    return paths, base, tuned


def dare(paths, tmp_path, name, **params):
    merge = {"method": "dare_linear", "base": "base", **params}
    return merged(paths, tmp_path, ["tuned"], merge, name)[0]["w"]


def test_dare_same_seed_same_bytes_other_seed_other_bytes(big, tmp_path):
    paths = big[0]
    first = dare(paths, tmp_path, "one", density=0.4, seed=7)
    again = dare(paths, tmp_path, "two", density=0.4, seed=7)
    other = dare(paths, tmp_path, "three", density=0.4, seed=8)
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_dare_keeps_density_of_the_delta(big, tmp_path):
    paths, base, tuned = big
    out = dare(paths, tmp_path, "kept", density=0.3, rescale=False)
    delta = out - base
    kept = (delta != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.02 * 0.3
    mask = delta != 0
    torch.testing.assert_close(delta[mask], (tuned - base)[mask], rtol=0, atol=1e-6)  # kept as they were


def test_dare_rescales_to_the_l1_norm_of_the_delta(big, tmp_path):
    """mergekit 0.1.5's rescale: the kept entries scaled so the delta keeps its L1 norm."""
    paths, base, tuned = big
    out = dare(paths, tmp_path, "rescaled", density=0.3)
    delta, original = out - base, tuned - base
    kept = delta != 0
    ratio = original.abs().sum() / (original * kept).abs().sum()
    torch.testing.assert_close(delta[kept], original[kept] * ratio, rtol=1e-5, atol=1e-5)
    assert math.isclose(delta.abs().sum().item(), original.abs().sum().item(), rel_tol=1e-4)


def test_dare_ties_masks_differ_per_source_and_elect_signs(big, tmp_path):
    paths, base, tuned = big
    out = merged(paths, tmp_path, ["tuned", "other"], {"method": "dare_ties", "base": "base", "density": 0.5,
                                                       "rescale": False}, "dt")[0]["w"]
    delta = out - base
    up, down = tuned - base, torch.as_tensor(load_file(paths["other"])["w"]) - base  # > 0 and < 0 everywhere
    # signs are opposite everywhere: each element keeps the elected source's delta, or nothing
    assert ((delta == 0) | torch.isclose(delta, up, rtol=0, atol=1e-6) | torch.isclose(delta, down, rtol=0, atol=1e-6)).all()
    assert (delta > 0).any() and (delta < 0).any()


# -- mergekit itself ---------------------------------------------------------------------------


MERGEKIT_CASES = {
    "linear": (["a", "b", "c"], {"method": "linear", "weights": [0.5, 0.3, 0.4]},
               {"merge_method": "linear", "models": {"a": {"weight": 0.5}, "b": {"weight": 0.3}, "c": {"weight": 0.4}}}),
    "task_arithmetic": (["a", "b"], {"method": "task_arithmetic", "base": "base", "weights": [0.7, 0.5], "lambda": 0.8},
                        {"merge_method": "task_arithmetic", "base": True, "parameters": {"lambda": 0.8},
                         "models": {"a": {"weight": 0.7}, "b": {"weight": 0.5}}}),
    "ties": (["a", "b", "c"], {"method": "ties", "base": "base", "weights": [0.6, 0.4, 0.5], "density": 0.5},
             {"merge_method": "ties", "base": True, "models": {"a": {"weight": 0.6, "density": 0.5},
                                                                 "b": {"weight": 0.4, "density": 0.5},
                                                                 "c": {"weight": 0.5, "density": 0.5}}}),
    "breadcrumbs_ties": (["a", "b"], {"method": "breadcrumbs_ties", "base": "base", "density": 0.6, "gamma": 0.05, "weights": [0.5, 0.7]},
                         {"merge_method": "breadcrumbs_ties", "base": True,
                          "models": {"a": {"weight": 0.5, "density": 0.6, "gamma": 0.05},
                                     "b": {"weight": 0.7, "density": 0.6, "gamma": 0.05}}}),
    "slerp": (["a", "b"], {"method": "slerp", "t": 0.3},
              {"merge_method": "slerp", "base_model": "a", "parameters": {"t": 0.3}, "models": {"a": {}, "b": {}}}),
    "model_stock": (["a", "b", "c"], {"method": "model_stock", "base": "base"},
                    {"merge_method": "model_stock", "base": True, "models": {"a": {}, "b": {}, "c": {}}}),
}


@REFERENCE_LIBRARIES
@pytest.mark.parametrize("case", list(MERGEKIT_CASES))
def test_method_equals_mergekit(models, tmp_path, case):
    raw = pytest.importorskip("mergekit.scripts.merge_raw_pytorch")
    import yaml

    paths, _ = models
    sources, merge, config = MERGEKIT_CASES[case]
    document = {"merge_method": config["merge_method"], "dtype": "float32",
                "models": [{"model": paths[name], "parameters": params} for name, params in config["models"].items()]}
    if config.get("base"):
        document["base_model"] = paths["base"]
        document["models"].append({"model": paths["base"]})
    if "base_model" in config:
        document["base_model"] = paths[config["base_model"]]
    if "parameters" in config:
        document["parameters"] = config["parameters"]
    (tmp_path / "mergekit.yaml").write_text(yaml.safe_dump(document))
    raw.main([str(tmp_path / "mergekit.yaml"), str(tmp_path / "mergekit"), "--quiet"], standalone_mode=False)
    theirs = load_file(str(tmp_path / "mergekit" / "model.safetensors"))
    ours, _ = merged(paths, tmp_path, sources, merge)
    assert sorted(theirs) == sorted(ours)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=f"{case} {key}")


def test_a_plan_files_merge_spec_that_fits_no_method_is_refused(models, tmp_path):
    from torchgraft.core.errors import PlanError
    from torchgraft.plans.codec import from_dict

    paths, _ = models
    _, the_plan = merged(paths, tmp_path, ["a", "b"], {"method": "ties", "base": "base"}, "ok")
    for change, message in ((("density", 7), "ties parameter density=7 is not valid"),
                            (("method", "karcher"), "unknown merge method 'karcher'"),
                            (("weights", [1.0]), "merge weights [1.0] do not fit 2 sources")):
        data = copy.deepcopy(the_plan.to_dict())
        piece = data["entries"][0]["pieces"][0]
        piece["merge"][change[0]] = change[1]
        with pytest.raises(PlanError) as caught:
            execute(from_dict(data), tmp_path / "bad.safetensors")
        assert str(caught.value) == f"plan: {data['entries'][0]['key']} (rules[0]): {message}"
        assert not (tmp_path / "bad.safetensors").exists()
