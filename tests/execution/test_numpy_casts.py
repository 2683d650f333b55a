"""execution.casts: float32 -> bfloat16 / float16, and float32 means, in numpy, bit for bit
what torch gives.

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
from torchgraft.execution.casts import cast_float32, mean_bits, read_cast
from torchgraft.execution.merges import merge

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


@settings(deadline=None)
@given(data=st.data(), count=st.integers(2, 5), length=st.integers(1, 100),
       dtype=st.sampled_from(["float32", "bfloat16", "float16"]))
def test_a_numpy_mean_is_torchs_merge_bit_for_bit(data, count, length, dtype):
    """mean_bits against merges.merge("mean") (then torch's cast), NaNs, infinities and
    subnormals included, at random lengths (vectorized body and scalar tail)."""
    sources = [np.array(data.draw(st.lists(bits32, min_size=length, max_size=length)), dtype=np.uint32)
               for _ in range(count)]
    tensors = [torch.from_numpy(bits.view(np.float32).copy()) for bits in sources]
    want = merge("mean", [lambda t=t: t for t in tensors], "k", "rules[0]").to(getattr(torch, dtype))
    got = mean_bits([bits.copy() for bits in sources], dtype)
    if got is None:  # declined only where NaNs meet (the running sum's and a term's)
        total, met = tensors[0] * (1 / count), False
        for tensor in tensors[1:]:
            term = tensor * (1 / count)
            met |= bool((total.isnan() & term.isnan()).any())
            total = total + term
        assert met
        return
    assert got.tobytes() == want.view(torch.uint8).numpy().tobytes()


def test_a_mean_where_nans_meet_is_torchs_too(tmp_path):
    from safetensors.torch import load_file, save_file

    import torchgraft

    sources = [torch.randn(40, 8, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    sources[0][3, 2], sources[1][3, 2] = float("nan"), -float("nan")
    for s, tensor in enumerate(sources):
        save_file({"w": tensor}, tmp_path / f"m{s}.safetensors")
    recipe = {"sources": {"a": str(tmp_path / "m0.safetensors"), "b": str(tmp_path / "m1.safetensors")}, "target": None,
              "rules": [{"from": ["a", "b"], "merge": "mean"}]}
    out = torchgraft.execute(torchgraft.plan(recipe), tmp_path / "out.safetensors")
    want = merge("mean", [lambda t=t: t for t in sources], "w", "rules[0]")
    assert load_file(out)["w"].view(torch.int32).equal(want.view(torch.int32))
