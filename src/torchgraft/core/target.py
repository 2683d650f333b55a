"""The target model: its inventory from a meta-device build, and its initial values.

Planning builds the model on the meta device, so a 70B-parameter target costs no
memory; only execution (when some tensor keeps its initial value) builds it for real,
seeded, exactly as ``torch.manual_seed(seed); Model(**kwargs)`` would.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

from torchgraft.core.errors import TargetError
from torchgraft.core.imports import ImportFailed, locate
from torchgraft.core.tensors import TensorInfo, dtype_name
from torchgraft.core.text import did_you_mean


def _locate(path: str) -> Any:
    try:
        return locate(path)
    except ImportFailed as err:
        raise TargetError("target._target_", f"cannot import '{path}': {err.reason}") from None


def _target_callable(spec: Mapping[str, Any]) -> Any:
    """The class or factory ``_target_`` names: an ``nn.Module`` subclass, or any other
    callable (a function, a classmethod such as ``from_config``) returning a module."""
    from torch import nn

    path = spec["_target_"]
    found = _locate(path)
    if isinstance(found, type) and not issubclass(found, nn.Module):
        raise TargetError("target._target_", f"'{path}' is not a torch.nn.Module subclass")
    if not callable(found):
        raise TargetError("target._target_", f"'{path}' is not a torch.nn.Module subclass or a function returning one")
    return found


def _check_arguments(target: Any, spec: Mapping[str, Any]) -> None:
    """Bind the recipe's arguments to the constructor (or factory) before anything is built."""
    kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: the call itself will tell
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    names = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in names and not takes_any:
            hint = did_you_mean(key, names) or f" (it takes: {', '.join(names) or 'nothing'})"
            raise TargetError(f"target.{key}", f"{spec['_target_']} has no argument '{key}'{hint}")
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise TargetError("target", f"{spec['_target_']}: {err}") from None
    _check_types(target, spec, kwargs)


_SIMPLE = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _check_types(target: Any, spec: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
    """An argument whose annotation is a plain int/float/str/bool must be one, so that
    ``num_classes: three`` names the argument instead of failing deep inside torch."""
    try:
        hints = inspect.signature(target, eval_str=True).parameters
    except Exception:  # annotations that do not evaluate: nothing to check against
        return
    for key, value in kwargs.items():
        param = hints.get(key)
        wanted = _SIMPLE.get(param.annotation) if param is not None else None
        if wanted is None or value is None:
            continue
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            raise TargetError(f"target.{key}", f"{spec['_target_']} expects {param.annotation.__name__} for '{key}', got {value!r}")


def build_model(spec: Mapping[str, Any], *, device: str | torch.device) -> nn.Module:
    """Instantiate the target model on ``device`` after checking its class and arguments.

    Arguments may be nested ``_target_`` mappings (a config object); Hydra builds them first."""
    import torch
    from hydra.utils import instantiate  # 60 ms of imports, for targets only
    from torch import nn

    factory = _target_callable(spec)
    _check_arguments(factory, spec)
    try:
        with torch.device(device):
            model = instantiate(dict(spec), _convert_="all")
    except Exception as err:
        cause = err.__cause__ or err
        reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
        where = " on the meta device" if str(device) == "meta" else ""
        raise TargetError("target", f"cannot build {spec['_target_']}{where}: {reason}") from None
    if not isinstance(model, nn.Module):
        kind = type(model)
        raise TargetError("target._target_", f"'{spec['_target_']}' returned {kind.__module__}.{kind.__qualname__}, "
                                             "not a torch.nn.Module")
    return model


def model_inventory(model: nn.Module) -> list[TensorInfo]:
    """Every entry of ``model.state_dict()`` as it really is (keys renamed by state-dict
    hooks included), in its own order. Parameter/buffer kind and module type are filled
    where the key names a parameter, a buffer or a module of the model, else None."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
    modules = dict(model.named_modules(remove_duplicate=False))
    infos = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        module = modules.get(key.rpartition(".")[0])
        kind = "parameter" if key in parameters else "buffer" if key in buffers else None
        infos.append(
            TensorInfo(
                key=key,
                shape=tuple(tensor.shape),
                dtype=dtype_name(tensor.dtype),
                kind=kind,
                module_type=None if module is None else class_name(module),
            )
        )
    return infos


def target_inventory(spec: Mapping[str, Any]) -> list[TensorInfo]:
    """The target's tensors from a meta-device build: names, shapes, dtypes, no memory."""
    return model_inventory(build_model(spec, device="meta"))


def initial_state(spec: Mapping[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """The values ``torch.manual_seed(seed); Model(**kwargs)`` gives, on the CPU."""
    import torch

    torch.manual_seed(seed)
    model = build_model(spec, device="cpu")
    return {k: v.detach() for k, v in model.state_dict().items()}


# -- target_init: per_module --------------------------------------------------------
# Planning refuses, and execution uses, the same two lookups: which module owns a
# kept tensor, and which of its methods re-initializes it.

_PER_MODULE = "target_init"


def class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def tensor_owner(model: nn.Module, key: str) -> tuple[str, nn.Module, str]:
    """``(module name, module, attribute)`` of the parameter or buffer ``key``."""
    name, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if module is None or (attr not in module._parameters and attr not in module._buffers):
        raise TargetError(_PER_MODULE, f"per_module cannot initialize '{key}': the model has no parameter "
                                       "or buffer of that name (a custom state_dict?) (set target_init=full)")
    return name, module, attr


def reset_function(name: str, module: nn.Module, key: str):
    """The method that re-initializes ``module``'s own tensors."""
    # torch.nn.MultiheadAttention (and Transformer layers) name it _reset_parameters.
    for method in ("reset_parameters", "_reset_parameters"):
        function = getattr(module, method, None)
        if callable(function):
            return function
    where = f"its module '{name}'" if name else "the model itself"
    raise TargetError(_PER_MODULE, f"per_module cannot initialize '{key}': {where} ({class_name(module)}) has no "
                                   "reset_parameters() (set target_init=full, or take it from a base checkpoint)")


def check_resettable(spec: Mapping[str, Any], keys: list[str]) -> None:
    """The TargetError that initializing ``keys`` module by module would raise first."""
    model = build_model(spec, device="meta")
    for key in keys:
        name, module, _ = tensor_owner(model, key)
        reset_function(name, module, key)
