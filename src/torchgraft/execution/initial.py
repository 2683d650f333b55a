"""Initial values of the tensors a plan keeps (wholly, or the parts no region covers).

Made only when an entry asks for one, from one of three places the plan names:

- ``base``: the base checkpoint's tensor;
- ``target_init: full`` (the default): ``torch.manual_seed(target_seed); Model(**kwargs)``
  on the CPU. Anyone can reproduce it by hand; it costs the whole model's memory.
- ``target_init: per_module``: the model is built on the meta device and only the
  modules that own kept tensors are made real, one at a time::

      module.to_empty(device="cpu", recurse=False)
      torch.manual_seed(module_seed(target_seed, module_name))
      module.reset_parameters()

  Memory is one module. The values come from the same initializers as plain
  construction but from other random draws, and ``__init__`` code outside
  ``reset_parameters`` (a parent re-initializing its children, ``post_init``) does
  not run: deterministic and reproducible, not equal to ``Model(**kwargs)``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

from torchgraft.core.errors import TargetError
from torchgraft.core.target import build_model, check_resettable, class_name, initial_state, reset_function, tensor_owner
from torchgraft.core.tensors import TensorInfo
from torchgraft.core.text import human_bytes
from torchgraft.plans.types import Entry, Plan

log = logging.getLogger(__name__)
LARGE_TARGET = 1 << 30  # above this, a full build is worth a note in the dry run
FIELD = "target_init"


def module_seed(seed: int, name: str) -> int:
    """The seed of module ``name`` under ``per_module``: sha256 of ``"{seed}:{name}"``,
    its first 8 bytes as a little-endian integer, top bit cleared."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def initial_values(plan: Plan, readers: Mapping) -> Mapping[str, torch.Tensor]:
    """``[key]`` -> the initial value of an output tensor, made on first use."""
    if plan.target.base is not None:
        return _FromBase(readers[plan.target.base])
    if _init(plan) == "per_module" and plan.target.spec is not None:
        return PerModule(plan.target.spec, plan.target.seed)
    return _Full(plan.target.spec, plan.target.seed)


class _FromBase:
    def __init__(self, reader):
        self.reader = reader

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.reader.read(key)


class _Full:
    def __init__(self, spec: dict, seed: int):
        self.spec, self.seed, self.values = spec, seed, None

    def __getitem__(self, key: str) -> torch.Tensor:
        if self.values is None:
            log.info("building %s (seed %d) for its initial values", self.spec["_target_"], self.seed)
            self.values = initial_state(self.spec, self.seed)
        return self.values[key]


class PerModule:
    """Initial values module by module; one module is real at a time."""

    def __init__(self, spec: dict, seed: int, model: nn.Module | None = None):
        self.spec, self.seed = spec, seed
        self.model = model if model is not None else build_model(spec, device="meta")
        self._current: tuple[str, nn.Module, set[str]] | None = None  # name, module, names left unset

    def __getitem__(self, key: str) -> torch.Tensor:
        name, module, attr = tensor_owner(self.model, key)
        if self._current is None or self._current[0] != name:
            self._release()
            self._current = (name, module, self._materialize(name, module, key))
        if attr in self._current[2]:
            raise TargetError(FIELD, f"per_module cannot initialize '{key}': {class_name(module)}."
                                     f"{reset_function(name, module, key).__name__}() "
                                     "does not set it (set target_init=full)")
        return getattr(module, attr).detach()

    def _materialize(self, name: str, module: nn.Module, key: str) -> set[str]:
        """Make ``module``'s own tensors real and reset them; the names reset left unset."""
        import torch

        reset = reset_function(name, module, key)
        module.to_empty(device="cpu", recurse=False)
        own = {**module._parameters, **module._buffers}
        with torch.no_grad():
            for tensor in own.values():
                if tensor is not None:
                    tensor.fill_(_sentinel(tensor.dtype))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(module_seed(self.seed, name))
                try:
                    reset()
                except Exception as err:
                    reason = f"{type(err).__name__}: {err}".splitlines()[0]
                    raise TargetError(FIELD, f"per_module cannot initialize '{key}': {class_name(module)}."
                                             f"{reset.__name__}() failed ({reason}) (set target_init=full)") from None
            # reset_parameters may assign new tensors: look them up again.
            own = {**module._parameters, **module._buffers}
            return {n for n, t in own.items() if t is not None and _untouched(t)}

    def _release(self) -> None:
        if self._current is not None:
            self._current[1].to_empty(device="meta", recurse=False)
            self._current = None


def _sentinel(dtype: torch.dtype):
    import torch

    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).max


def _untouched(tensor: torch.Tensor) -> bool:
    """Still (partly, for floats) the sentinel: reset_parameters did not set it."""
    import torch

    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        return bool(torch.isnan(tensor).any())
    return tensor.numel() > 0 and bool((tensor == _sentinel(tensor.dtype)).all())


def _init(plan: Plan) -> str:
    return getattr(plan.target, "init", "full")


def check_initial(plan: Plan) -> None:
    """For a per_module plan, the TargetError its execution would raise first, raised now."""
    if _init(plan) != "per_module" or plan.target.spec is None or plan.target.base is not None:
        return
    keys = [e.key for e in plan.entries if e.needs_initial]
    if keys:
        check_resettable(plan.target.spec, keys)


def _nbytes(entries) -> int:
    return sum(TensorInfo(e.key, e.shape, e.dtype).nbytes for e in entries)


def advice(plan: Plan) -> str | None:
    """A note for the dry run when keeping tensors means building a large model whole."""
    if plan.target.spec is None or plan.target.base is not None or _init(plan) != "full":
        return None
    kept: list[Entry] = [e for e in plan.entries if e.needs_initial]
    total = _nbytes(plan.entries)
    if not kept or total < LARGE_TARGET:
        return None
    count = f"{len(kept)} kept tensor{'s' if len(kept) != 1 else ''}"
    return (f"note: the {count} ({human_bytes(_nbytes(kept))}) take their initial values from building all of "
            f"{plan.target.spec['_target_']} ({human_bytes(total)}) on the CPU; target_init=per_module builds "
            "only the modules they belong to (same initializers, other random draws: see docs/large-checkpoints.md)")
