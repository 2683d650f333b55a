"""Tensor descriptions without data, and the dtype names used in plans."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Canonical names are torch's own (``torch.float32`` -> ``float32``); plans and
# headers use these. Short names keep plan lines narrow; safetensors codes are the
# file format's. Item sizes and the floating flag are here, not asked of torch, so that
# planning and byte copies never import it (1.5 s of start-up).
_DTYPES: dict[str, tuple[str, str, int, bool]] = {
    "float64": ("f64", "F64", 8, True),
    "float32": ("f32", "F32", 4, True),
    "float16": ("f16", "F16", 2, True),
    "bfloat16": ("bf16", "BF16", 2, True),
    "float8_e4m3fn": ("f8e4m3", "F8_E4M3", 1, True),
    "float8_e5m2": ("f8e5m2", "F8_E5M2", 1, True),
    "int64": ("i64", "I64", 8, False),
    "int32": ("i32", "I32", 4, False),
    "int16": ("i16", "I16", 2, False),
    "int8": ("i8", "I8", 1, False),
    "uint8": ("u8", "U8", 1, False),
    "uint16": ("u16", "U16", 2, False),
    "uint32": ("u32", "U32", 4, False),
    "uint64": ("u64", "U64", 8, False),
    "bool": ("bool", "BOOL", 1, False),
    "complex64": ("c64", "C64", 8, False),
}
DTYPE_NAMES = tuple(_DTYPES)
_BY_SAFETENSORS = {v[1]: k for k, v in _DTYPES.items()}
# Accepted spellings in recipes (output.dtype, cast transforms).
_ALIASES = {**{k: k for k in _DTYPES}, **{v[0]: k for k, v in _DTYPES.items()},
            "float": "float32", "half": "float16", "double": "float64", "long": "int64",
            "int": "int32", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype}")
    return name


def torch_dtype(name: str) -> torch.dtype:
    import torch

    _DTYPES[name]  # KeyError for a name outside the table, as before
    return getattr(torch, name)


def short_dtype(name: str) -> str:
    """``"float32"`` -> ``"f32"``, for plan lines."""
    return _DTYPES[name][0]


def safetensors_code(name: str) -> str:
    return _DTYPES[name][1]


def from_safetensors_code(code: str) -> str:
    return _BY_SAFETENSORS[code]


def parse_dtype(text: str) -> str | None:
    """A recipe's dtype spelling (``bf16``, ``torch.bfloat16``) -> canonical name, or None."""
    return _ALIASES.get(str(text).removeprefix("torch."))


def is_floating(name: str) -> bool:
    return _DTYPES[name][3]


def itemsize(name: str) -> int:
    return _DTYPES[name][2]


@dataclass(slots=True, unsafe_hash=True)
class TensorInfo:
    """A tensor known by header only: what plans are made of. A value, never changed
    once made (not ``frozen``, which costs 0.4 µs per object: see plan.Read)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    kind: str | None = None  # "parameter" | "buffer" for target tensors
    module_type: str | None = None  # e.g. "torch.nn.Conv2d" for target tensors

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)
