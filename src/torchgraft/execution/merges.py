"""The math of merges: one function per method, on the tensors of one target key.

Each takes the piece's merge spec (canonical: every parameter present, no gradient
left) and one loader per read, in the plan's order (a base, when the method has one,
last), and returns values in the first source's dtype. Work is in float32 (float64 for
float64 sources); sources are loaded one at a time where the method allows, and
accumulated in place. Random methods draw from a generator seeded from ``seed`` and the
target key, never from global RNG state, so a merge is the same bit for bit on every run.
The plan comes from a file: a spec that does not fit its method is a ``PlanError``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from torchgraft.core.errors import PlanError
from torchgraft.core.merge_methods import LORA, METHODS, Method

if TYPE_CHECKING:
    import torch

Loader = Callable[[], "torch.Tensor"]


def merge(spec: object, loaders: Sequence[Loader], key: str, rule: str) -> torch.Tensor:
    """The merged values of ``key`` (``rule`` names the piece for errors)."""
    if spec == "mean":
        return _finish(*_weighted_sum([1 / len(loaders)] * len(loaders), loaders))
    if not isinstance(spec, Mapping):
        raise PlanError("plan", f"{key} ({rule}): merge {spec!r} is not a merge spec")
    if "method" not in spec:
        return _finish(*_weighted_sum(_weights(spec, len(loaders), key, rule), loaders))
    name = spec["method"]
    if name == LORA:
        return lora(spec, loaders, key, rule)
    method = METHODS.get(name)
    if method is None:
        raise PlanError("plan", f"{key} ({rule}): unknown merge method {name!r}")
    _check(spec, method, len(loaders), key, rule)
    return _METHODS[method.name](spec, method, loaders, key)


# -- checks of a spec read from a plan --------------------------------------------------


def _check(spec: Mapping, method: Method, count: int, key: str, rule: str) -> None:
    models = count - (1 if method.base else 0)
    for param in method.params:
        value = spec.get(param.name)
        if param.kind == "bool":
            ok = isinstance(value, bool)
        elif param.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = _finite(value) and (param.kind != "fraction" or 0 < value <= 1)
        if not ok:
            raise PlanError("plan", f"{key} ({rule}): {method.name} parameter {param.name}={value!r} is not valid")
    if method.weights:
        _weights(spec, models, key, rule)
    if models < method.min_sources or (method.max_sources is not None and models > method.max_sources):
        raise PlanError("plan", f"{key} ({rule}): {method.name} cannot merge {models} sources")


def _weights(spec: Mapping, count: int, key: str, rule: str) -> list[float]:
    weights = spec.get("weights")
    if not isinstance(weights, list) or len(weights) != count or not all(map(_finite, weights)):
        raise PlanError("plan", f"{key} ({rule}): merge weights {weights!r} do not fit {count} sources")
    return weights


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- helpers ------------------------------------------------------------------------------


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    import torch

    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _finish(value: torch.Tensor, like: torch.Tensor | torch.dtype) -> torch.Tensor:
    """Back to the sources' dtype; integer buffers are rounded first."""
    dtype = like if not hasattr(like, "dtype") else like.dtype
    return (value if dtype.is_floating_point else value.round()).to(dtype)


def _weighted_sum(weights: Sequence[float], loaders: Sequence[Loader]) -> tuple[torch.Tensor, torch.dtype]:
    """``Σ w·x`` with the sources loaded one at a time into one scratch buffer: peak memory
    is the sum, the scratch and one source. Each term is rounded as ``w * x.float()`` is,
    then added in order, so the values are those of the plain expression."""
    import torch

    first = loaders[0]()
    work = _work_dtype(first)
    total = first.to(work) * weights[0]
    scratch = None
    for w, load in zip(weights[1:], loaders[1:]):
        tensor = load()
        if scratch is None:
            scratch = torch.empty_like(total)
        scratch.copy_(tensor)
        del tensor
        scratch.mul_(w)
        total.add_(scratch)
    return total, first.dtype


def tensor_seed(seed: int, key: str, index: int) -> int:
    """The seed of source ``index``'s random mask for ``key``: from the recipe's seed and
    the key alone, so a tensor's mask does not depend on what else the plan holds."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# -- linear ---------------------------------------------------------------------------------


def linear(spec: Mapping, method: Method, loaders: Sequence[Loader], key: str) -> torch.Tensor:
    weights = spec["weights"]
    total, dtype = _weighted_sum(weights, loaders)
    if spec["normalize"]:
        total /= sum(weights)
    return _finish(total, dtype)


# -- task arithmetic and its sparsified / sign-elected variants ------------------------------


def sparsify(delta: torch.Tensor, method: Method, spec: Mapping, generator) -> torch.Tensor:
    """mergekit's ``sparsify``: keep a ``density`` share of ``delta`` (in place where possible)."""
    density = spec["density"]
    if density >= 1:
        return delta
    import torch

    n = delta.numel()
    if method.sparsify == "magnitude":  # the largest |delta|
        k = max(1, int(density * n))  # mergekit 0.1.5: a positive density keeps at least one element
        mask = _largest(delta.abs().view(-1), k)
    elif method.sparsify == "magnitude_outliers":  # drop the gamma share of largest, then the smallest
        target, top = int(density * n), int(spec["gamma"] * n)
        bottom = max(0, n - target - top)  # fewer outliers dropped where the density asks for it
        order = torch.argsort(delta.abs().view(-1), stable=True)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[bottom:bottom + target]] = True
    else:  # random: DARE
        mask = torch.rand(n, generator=generator, dtype=torch.float32) < density
    mask = mask.view(delta.shape)
    if not spec["rescale"]:
        return delta.mul_(mask)
    before = delta.abs().sum()
    delta.mul_(mask)
    after = delta.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return delta
    return delta.mul_(before / after)  # the L1 norm the delta had (mergekit's RescaleNorm.l1)


def _largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The mask of the ``k`` largest values, equal values taken in index order: the first
    ``k`` of a stable descending argsort (mergekit's), by a selection instead of a sort."""
    import torch

    threshold = torch.kthvalue(values, values.numel() - k + 1).values
    mask = values > threshold
    ties = torch.nonzero(values == threshold).view(-1)
    mask[ties[: k - int(mask.sum())]] = True
    return mask


def task_arithmetic(spec: Mapping, method: Method, loaders: Sequence[Loader], key: str) -> torch.Tensor:
    import torch

    raw_base = loaders[-1]()
    work = _work_dtype(raw_base)
    base = raw_base.to(work)
    weights = spec["weights"]
    deltas = []
    for i, load in enumerate(loaders[:-1]):
        delta = load().to(work, copy=True)
        delta.sub_(base)
        generator = None
        if method.sparsify == "random":
            generator = torch.Generator().manual_seed(tensor_seed(spec["seed"], key, i))
        if method.sparsify is not None:
            delta = sparsify(delta, method, spec, generator)
        deltas.append(delta.mul_(weights[i]))
    if method.consensus:  # TIES: elect a sign per element by the sum of weighted deltas
        total = deltas[0].clone()
        for delta in deltas[1:]:
            total.add_(delta)
        majority = torch.where(total >= 0, 1.0, -1.0).to(work)
        del total
        mixed = torch.zeros_like(base)
        divisor = torch.zeros_like(base)
        for w, delta in zip(weights, deltas):
            agree = delta.sign() == majority
            mixed.add_(delta.mul_(agree))
            divisor.add_(agree.to(work).mul_(w))
        divisor[divisor == 0] = 1
    else:
        mixed = deltas[0]
        for delta in deltas[1:]:
            mixed.add_(delta)
        divisor = sum(weights)
        if abs(divisor) < 1e-8:
            divisor = 1.0
    del deltas
    if spec["normalize"]:
        mixed /= divisor
    if spec["lambda"] != 1:
        mixed *= spec["lambda"]
    return _finish(mixed.add_(base), raw_base)


# -- slerp and model stock --------------------------------------------------------------------


def slerp(spec: Mapping, method: Method, loaders: Sequence[Loader], key: str) -> torch.Tensor:
    """mergekit's ``slerp`` (t = 0: the first source); nearly colinear tensors are lerped."""
    t = spec["t"]
    raw = loaders[0]()
    work = _work_dtype(raw)
    v0, v1 = raw.to(work), loaders[1]().to(work)
    n0, n1 = float(v0.norm()), float(v1.norm())
    dot = float((v0.reshape(-1) * v1.reshape(-1)).sum()) / ((n0 if n0 > 1e-8 else 1.0) * (n1 if n1 > 1e-8 else 1.0))
    if abs(dot) > 0.9995:
        s0, s1 = 1 - t, t
    else:
        theta_0 = math.acos(dot)
        theta_t = theta_0 * t
        s0 = math.sin(theta_0 - theta_t) / math.sin(theta_0)
        s1 = math.sin(theta_t) / math.sin(theta_0)
    out = v0 * s0
    out.add_(v1 * s1)
    return _finish(out, raw)


def model_stock(spec: Mapping, method: Method, loaders: Sequence[Loader], key: str) -> torch.Tensor:
    """mergekit's ``model_stock``: the average of the models pulled towards the base by the
    mean pairwise cosine of their offsets from it."""
    import torch

    raw_base = loaders[-1]()
    work = _work_dtype(raw_base)
    shape = raw_base.shape
    w0 = raw_base.to(work)
    ws = [load().to(work) for load in loaders[:-1]]
    if spec["filter_wise"]:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    del offsets
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # no finite estimate: the base, as mergekit 0.1.5 keeps it
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / torch.where(singular, 1.0, denominator))
    average = ws[0].clone()
    for w in ws[1:]:
        average.add_(w)
    average /= n
    return _finish((t * average + (1 - t) * w0).reshape(shape), raw_base)


# -- LoRA ---------------------------------------------------------------------------------------


def lora(spec: Mapping, loaders: Sequence[Loader], key: str, rule: str) -> torch.Tensor:
    """``W + s·(B @ A)`` for each adapter (``(B @ A)ᵀ`` where ``transpose``), as PEFT's
    ``merge_and_unload`` computes it: the product scaled, then added."""
    adapters = spec.get("adapters")
    if (not isinstance(adapters, list) or len(loaders) != 1 + 2 * len(adapters)
            or not all(isinstance(a, Mapping) and _finite(a.get("scale")) and isinstance(a.get("transpose"), bool)
                       for a in adapters)):
        raise PlanError("plan", f"{key} ({rule}): lora merge {spec!r} does not fit its {len(loaders)} reads")
    raw = loaders[0]()
    work, dtype = _work_dtype(raw), raw.dtype
    out = raw.to(work, copy=True)
    del raw
    for i, adapter in enumerate(adapters):
        a, b = loaders[1 + 2 * i]().to(work), loaders[2 + 2 * i]().to(work)
        delta = (b @ a).mul_(adapter["scale"])
        out.add_(delta.T if adapter["transpose"] else delta)
    return _finish(out, dtype)


_METHODS: dict[str, Callable] = {
    "linear": linear, "task_arithmetic": task_arithmetic, "ties": task_arithmetic, "dare_linear": task_arithmetic,
    "dare_ties": task_arithmetic, "breadcrumbs": task_arithmetic, "breadcrumbs_ties": task_arithmetic,
    "slerp": slerp, "model_stock": model_stock,
}
