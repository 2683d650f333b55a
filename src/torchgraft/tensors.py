"""Tensor descriptions without data, and the dtype names used in plans."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Canonical names are torch's own (``torch.float32`` -> ``float32``); plans and
# headers use these. Short names keep plan lines narrow; safetensors codes are the
# file format's.
_DTYPES: dict[str, tuple[torch.dtype, str, str]] = {
    "float64": (torch.float64, "f64", "F64"),
    "float32": (torch.float32, "f32", "F32"),
    "float16": (torch.float16, "f16", "F16"),
    "bfloat16": (torch.bfloat16, "bf16", "BF16"),
    "float8_e4m3fn": (torch.float8_e4m3fn, "f8e4m3", "F8_E4M3"),
    "float8_e5m2": (torch.float8_e5m2, "f8e5m2", "F8_E5M2"),
    "int64": (torch.int64, "i64", "I64"),
    "int32": (torch.int32, "i32", "I32"),
    "int16": (torch.int16, "i16", "I16"),
    "int8": (torch.int8, "i8", "I8"),
    "uint8": (torch.uint8, "u8", "U8"),
    "uint16": (torch.uint16, "u16", "U16"),
    "uint32": (torch.uint32, "u32", "U32"),
    "uint64": (torch.uint64, "u64", "U64"),
    "bool": (torch.bool, "bool", "BOOL"),
    "complex64": (torch.complex64, "c64", "C64"),
}
_BY_TORCH = {v[0]: k for k, v in _DTYPES.items()}
_BY_SAFETENSORS = {v[2]: k for k, v in _DTYPES.items()}
# Accepted spellings in recipes (output.dtype, cast transforms).
_ALIASES = {**{k: k for k in _DTYPES}, **{v[1]: k for k, v in _DTYPES.items()},
            "float": "float32", "half": "float16", "double": "float64", "long": "int64",
            "int": "int32", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    try:
        return _BY_TORCH[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype}") from None


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name][0]


def short_dtype(name: str) -> str:
    """``"float32"`` -> ``"f32"``, for plan lines."""
    return _DTYPES[name][1]


def safetensors_code(name: str) -> str:
    return _DTYPES[name][2]


def from_safetensors_code(code: str) -> str:
    return _BY_SAFETENSORS[code]


def parse_dtype(text: str) -> str | None:
    """A recipe's dtype spelling (``bf16``, ``torch.bfloat16``) -> canonical name, or None."""
    return _ALIASES.get(str(text).removeprefix("torch."))


def is_floating(name: str) -> bool:
    return torch_dtype(name).is_floating_point


def itemsize(name: str) -> int:
    return torch_dtype(name).itemsize


@dataclass(frozen=True)
class TensorInfo:
    """A tensor known by header only: what plans are made of."""

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
