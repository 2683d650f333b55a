"""Selecting target tensors by the class of the module that holds them (``types``)
and by kind (parameters or buffers), for bulk rules.

The target inventory records each tensor's module class by its defining path
(``torch.nn.modules.conv.Conv2d``); recipes name classes as users write them
(``torch.nn.Conv2d``). Both are resolved to classes and compared with ``issubclass``,
as ``isinstance(module, nn.Conv2d)`` would, so subclasses (timm's ``Conv2dSame``) count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from torchgraft.core.errors import PlanError
from torchgraft.core.imports import find_class
from torchgraft.core.tensors import TensorInfo

_KIND = {"all": None, "parameters": "parameter", "buffers": "buffer"}
_WHAT = {"all": "tensor", "parameters": "parameter", "buffers": "buffer"}


@functools.cache
def _module_class(module_type: str) -> type | None:
    return find_class(module_type)


class TargetFilter:
    """Which target tensors a bulk rule may write: ``accepts(info)``."""

    def __init__(self, types: Sequence[str], kind: str, field: str, target: Sequence[TensorInfo]):
        from torch import nn

        self.kind = _KIND[kind]
        self.classes: list[type] = []
        for i, path in enumerate(types):
            cls = find_class(path)
            if cls is None:
                raise PlanError(f"{field}.types[{i}]", f"cannot import '{path}' (write the full path, e.g. torch.nn.Conv2d)")
            if not issubclass(cls, nn.Module):
                raise PlanError(f"{field}.types[{i}]", f"'{path}' is not a torch.nn.Module subclass")
            self.classes.append(cls)
        for i, (path, cls) in enumerate(zip(types, self.classes)):
            if not any(self._kind_ok(info) and self._is(info, cls) for info in target):
                raise PlanError(f"{field}.types[{i}]", f"'{path}' holds no {_WHAT[kind]} of the target")
        if not types and not any(self._kind_ok(info) for info in target):
            raise PlanError(f"{field}.kind", f"the target has no {kind}")

    def accepts(self, info: TensorInfo) -> bool:
        if not self._kind_ok(info):
            return False
        return not self.classes or any(self._is(info, cls) for cls in self.classes)

    def _kind_ok(self, info: TensorInfo) -> bool:
        return self.kind is None or info.kind == self.kind

    @staticmethod
    def _is(info: TensorInfo, cls: type) -> bool:
        if info.module_type is None:
            return False
        found = _module_class(info.module_type)
        if found is None:  # a class defined in a function: compare by name
            return info.module_type == f"{cls.__module__}.{cls.__qualname__}"
        return issubclass(found, cls)
