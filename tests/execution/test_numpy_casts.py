"""execution.casts: float32 -> bfloat16 / float16 in numpy, bit for bit what torch gives.

Random float32 bit patterns (so NaNs with every payload, infinities, subnormals and
exact ties all occur), at random lengths (torch's vectorized body and its scalar tail
both), compared with ``tensor.to(dtype)`` on this CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchgraft.checkpoints.byteranges import ByteRange
from torchgraft.execution.casts import cast_float32, read_cast

SPECIAL = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FA00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F812345,
           0x7F800000, 0xFF800000, 0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x7F7FFFFF, 0xFF7FFFFF,
           0x3F808000, 0x3F818000, 0x3F807FFF, 0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x387FC000,
           0x00000000, 0x80000000]
bits32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(SPECIAL))
# Ties: the bits that decide rounding are exactly half way, for either target.
ties = st.builds(lambda hi, bf: (hi << 16 | 0x8000) if bf else (hi << 13 | 0x1000), st.integers(0, 2**16 - 1), st.booleans())


def torch_bits(bits: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    return torch.from_numpy(bits.view(np.float32).copy()).to(dtype).view(torch.int16).numpy().view(np.uint16)


@settings(deadline=None)
@given(values=st.lists(st.one_of(bits32, ties.map(lambda b: b & 0xFFFFFFFF)), min_size=1, max_size=200),
       dtype=st.sampled_from(["bfloat16", "float16"]))
def test_numpy_rounding_is_torchs_bit_for_bit(values, dtype):
    bits = np.array(values, dtype=np.uint32)
    want = torch_bits(bits, getattr(torch, dtype))
    got = cast_float32(bits.copy(), dtype)
    assert got.tolist() == want.tolist(), [hex(v) for v, a, b in zip(values, got, want) if a != b][:5]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_special_value_and_a_chunked_read(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr("torchgraft.execution.casts.CHUNK", 7)  # several chunks, and a short last one
    rng = np.random.default_rng(0)
    bits = np.concatenate([np.array(SPECIAL, dtype=np.uint32), rng.integers(0, 2**32, 1000, dtype=np.uint32)])
    path = tmp_path / "raw"
    path.write_bytes(b"head" + bits.tobytes())
    with open(path, "rb") as f:
        got = read_cast(ByteRange(path, f.fileno(), 4, bits.nbytes), "float32", dtype)
    assert got.view(np.uint16).tolist() == torch_bits(bits, getattr(torch, dtype)).tolist()
