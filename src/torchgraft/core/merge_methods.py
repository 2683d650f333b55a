"""The table of merge methods: each method's parameters, defaults and needs, as data.

One table serves every layer: the recipe parser reads parameters against it, the planner
checks sources and values, the plan text leaves defaults out, and the executor's math
(``execution/merges.py``) is keyed by the same names. Names, parameters and defaults are
mergekit 0.1.5's (``merge_methods/registry.py``); docs/merging.md lists where we differ.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUIRED = object()  # a parameter without a default


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "number" (may vary by layer) | "fraction" (a number in (0, 1]) | "bool" | "int"
    default: object = REQUIRED

    @property
    def numeric(self) -> bool:
        return self.kind in ("number", "fraction")


@dataclass(frozen=True)
class Method:
    name: str
    params: tuple[Param, ...] = ()
    weights: bool = False  # takes one weight per source (default 1.0 each)
    base: bool = False  # needs a base: its tensor for the same key
    min_sources: int = 1
    max_sources: int | None = None
    sparsify: str | None = None  # magnitude | random | magnitude_outliers
    consensus: bool = False  # TIES sign election

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def fields(self) -> tuple[str, ...]:
        """The recipe fields of ``merge: {method: ...}`` for this method."""
        return ("method", *(("base",) if self.base else ()), *(p.name for p in self.params),
                *(("weights",) if self.weights else ()))


def _task_arithmetic(name: str, *, sparsify: str | None, consensus: bool, normalize: bool, rescale: bool) -> Method:
    params = []
    if sparsify is not None:
        params.append(Param("density", "fraction", 1.0))
    if sparsify == "magnitude_outliers":
        params.append(Param("gamma", "number", 0.01))
    params += [Param("lambda", "number", 1.0), Param("normalize", "bool", normalize)]
    if sparsify is not None:
        params.append(Param("rescale", "bool", rescale))
    if consensus:
        params.append(Param("int8_mask", "bool", False))
    if sparsify == "random":
        params.append(Param("seed", "int", 0))
    return Method(name, tuple(params), weights=True, base=True, sparsify=sparsify, consensus=consensus)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("linear", (Param("normalize", "bool", True),), weights=True, min_sources=2),
    _task_arithmetic("task_arithmetic", sparsify=None, consensus=False, normalize=False, rescale=False),
    _task_arithmetic("ties", sparsify="magnitude", consensus=True, normalize=True, rescale=False),
    _task_arithmetic("dare_linear", sparsify="random", consensus=False, normalize=False, rescale=True),
    _task_arithmetic("dare_ties", sparsify="random", consensus=True, normalize=False, rescale=True),
    _task_arithmetic("breadcrumbs", sparsify="magnitude_outliers", consensus=False, normalize=False, rescale=False),
    _task_arithmetic("breadcrumbs_ties", sparsify="magnitude_outliers", consensus=True, normalize=False, rescale=False),
    Method("slerp", (Param("t", "number"),), min_sources=2, max_sources=2),  # mergekit: base and one other
    Method("model_stock", (Param("filter_wise", "bool", False),), base=True, min_sources=2),
)}

# Not a merge of sources but a source's tensor with adapters applied (planning/adapters.py).
LORA = "lora"
