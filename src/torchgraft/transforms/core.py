"""The ``Transform`` value and the argument checks every transform shares.

A transform is a pair: a shape (and dtype) rule the planner runs on headers, and the
tensor function the executor runs on data. Keeping both in one value is what lets the
plan promise a shape before any byte is read; tests hold the two to agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from torchgraft.core.errors import RecipeError
from torchgraft.core.tensors import is_floating

Shape = tuple[int, ...]
# A transform computes its output in memory: a few words of a recipe (pad_rows to 1e11,
# interpolate to 100000x100000) must not reach the allocator. 2**32 elements is 16 GiB
# of float32, more than any single tensor of a released model.
MAX_ELEMENTS = 2**32


@dataclass(frozen=True)
class Transform:
    spec: Any  # canonical, JSON-able: "transpose" or {"name": argument}, defaults filled in
    out_shape: Callable[[Shape], Shape]  # raises ValueError with the reason
    out_dtype: Callable[[str], str]  # raises ValueError with the reason
    fn: Callable[..., torch.Tensor]  # fn(tensor), or fn(tensor, initial) when reads_initial
    # fn also takes the destination's initial value (pad_rows with fill: init). Such a
    # transform must come last, where its output lines up with the destination.
    reads_initial: bool = False

    def apply(self, tensor: torch.Tensor, initial: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Run the tensor function; ``initial`` returns the destination's initial value, on demand."""
        if not self.reads_initial:
            return self.fn(tensor)
        if initial is None:
            raise ValueError(f"{self.name} needs the destination's initial value")
        return self.fn(tensor, initial())

    @property
    def name(self) -> str:
        return self.spec if isinstance(self.spec, str) else next(iter(self.spec))


def check_size(shape: Shape) -> None:
    """Refuse (ValueError) an output larger than ``MAX_ELEMENTS``."""
    numel = 1
    for d in shape:
        numel *= d
    if numel > MAX_ELEMENTS:
        raise ValueError(f"would make a tensor of {numel} elements {list(shape)}, over the limit of "
                         f"{MAX_ELEMENTS} (2**32) for a transform's output")


def same_dtype(dtype: str) -> str:
    return dtype


def floating_only(name: str) -> Callable[[str], str]:
    def check(dtype: str) -> str:
        if not is_floating(dtype):
            raise ValueError(f"{name} needs a floating-point tensor, got {dtype}")
        return dtype

    return check


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_list(arg: Any, field: str, name: str) -> list[int]:
    if not isinstance(arg, (list, tuple)) or not all(is_int(x) for x in arg):
        raise RecipeError(field, f"{name} expects a list of integers, got {arg!r}")
    return list(arg)


def options(arg: Any, field: str, name: str, known: Sequence[str], example: str) -> Mapping[str, Any]:
    """A transform's mapping argument, with unknown keys refused by name."""
    if not isinstance(arg, Mapping):
        raise RecipeError(field, f"{name} expects a mapping such as {example}, got {arg!r}")
    for key in arg:
        if key not in known:
            raise RecipeError(f"{field}.{name}.{key}", f"unknown option of {name} (known: {', '.join(known)})")
    return arg


def working(t: torch.Tensor) -> torch.Tensor:
    """The precision to compute in: float64 stays, every other dtype goes to float32
    (interpolation and sums in half precision lose more than the result can hold)."""
    import torch

    return t if t.dtype == torch.float64 else t.float()


def positive_int(value: Any, field: str, what: str) -> int:
    if not is_int(value) or value < 1:
        raise RecipeError(field, f"expected {what} (a positive integer), got {value!r}")
    return value
