"""Float casts and means in numpy, bit-identical to torch's, so a plan that only casts or
averages float32 tensors imports no torch.

Importing torch costs ~1.4 s and ~220 MiB; a float32 checkpoint cast to bfloat16 or
float16 needs none of it: each output tensor is its source's bytes, rounded. The rules
are torch's own on this CPU (checked bit for bit by a property test against torch,
NaN payloads, infinities, subnormals and ties included):

- float32 -> bfloat16: round to nearest, ties to even, on the bits; every NaN becomes 0xFFFF.
- float32 -> float16: numpy's rounding (nearest, ties to even, subnormals, overflow to
  infinity); a NaN keeps its sign and top payload bits and is made quiet, as the F16C
  instruction torch uses does (numpy keeps a signalling NaN signalling instead).

A mean of float32 tensors is computed as ``merges.merge("mean", ...)`` computes it: each
source times the float32 weight ``1/n`` (one rounding), added in order into the first
term; numpy's float32 multiply and add round as torch's kernels do (a property test).
Where two NaNs meet, torch keeps one payload or the other depending on where the element
falls in its vector loop: such a tensor is averaged by torch instead.

A cast reads its source ``CHUNK`` items at a time into one buffer, so memory is the
output plus one chunk (the executor cuts a large tensor into row chunks); a mean reads
its sources whole and works ``CHUNK`` items at a time.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from torchgraft.checkpoints.byteranges import ByteRange

if TYPE_CHECKING:
    import numpy as np  # imported where a cast runs: a dry run or a byte copy does without its 0.2 s

CASTS = frozenset({("float32", "bfloat16"), ("float32", "float16")})
CHUNK = 1 << 18  # items per pass: 1 MiB of float32, which stays in cache through the passes (3x faster than 16 MiB)


def cast_float32(bits: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values given as uint32 ``bits`` -> the uint16 bits of ``dtype``, as torch rounds."""
    import numpy as np

    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    if dtype == "bfloat16":
        rounded = bits >> 16
        rounded &= 1
        rounded += 0x7FFF
        rounded += bits  # never wraps: the largest non-NaN bits (-inf) are 0xFF800000
        rounded >>= 16
        out = rounded.astype(np.uint16)
        out[nan] = 0xFFFF
        return out
    if dtype == "float16":
        with np.errstate(over="ignore"):  # overflow to infinity is the rounding asked for
            out = bits.view(np.float32).astype(np.float16).view(np.uint16)
        if nan.any():
            payload = bits[nan]
            out[nan] = ((payload >> 16) & 0x8000) | 0x7E00 | ((payload >> 13) & 0x3FF)
        return out
    raise ValueError(f"no numpy cast from float32 to {dtype}")


def read_cast(where: ByteRange, src: str, dst: str) -> np.ndarray:
    """The tensor stored at ``where`` (``src`` items, read through the descriptor the
    range carries), cast to ``dst``: its bytes, as uint8."""
    import numpy as np

    if (src, dst) not in CASTS:
        raise ValueError(f"no numpy cast from {src} to {dst}")
    count = where.length // 4
    out = np.empty(count, dtype=np.uint16)
    buffer = np.empty(min(count, CHUNK), dtype=np.uint32)  # one buffer, hot in cache: no page faults per tensor
    view = memoryview(buffer).cast("B")
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        _pread_into(where.fd, view[:n * 4], where.offset + start * 4, where)
        out[start:start + n] = cast_float32(buffer[:n], dst)
    return out.view(np.uint8)


def read_bits(where: ByteRange) -> np.ndarray:
    """The float32 items stored at ``where``, as uint32 bits (one ``pread``)."""
    import numpy as np

    bits = np.empty(where.length // 4, dtype=np.uint32)
    _pread_into(where.fd, memoryview(bits).cast("B"), where.offset, where)
    return bits


def cast_bits(bits: np.ndarray, dst: str) -> np.ndarray:
    """float32 ``bits`` cast to ``dst``, ``CHUNK`` items at a time: the bytes, as uint8."""
    import numpy as np

    out = np.empty(len(bits), dtype=np.uint16)
    for start in range(0, len(bits), CHUNK):
        out[start:start + CHUNK] = cast_float32(bits[start:start + CHUNK], dst)
    return out.view(np.uint8)


def _pread_into(fd: int, view: memoryview, offset: int, where: ByteRange) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"{where.path}: ended early (truncated since it was opened?)")
        done += n


def mean_bits(sources: list[np.ndarray], dst: str) -> np.ndarray | None:
    """The mean of float32 tensors given as uint32 bits, as ``merges.merge("mean")`` makes
    it, in ``dst`` (float32, or a cast of it): its bytes, as uint8. None where a NaN meets
    a NaN: which payload torch keeps then depends on its vector width; compute it there."""
    import numpy as np

    weight = np.float32(1 / len(sources))
    with np.errstate(invalid="ignore", over="ignore"):  # infinities and NaNs are values here
        total = sources[0].view(np.float32) * weight
        scratch = np.empty_like(total)
        for bits in sources[1:]:
            np.multiply(bits.view(np.float32), weight, out=scratch)
            if (np.isnan(total) & np.isnan(scratch)).any():
                return None
            total += scratch
    if dst == "float32":
        return total.view(np.uint8)
    return cast_bits(total.view(np.uint32), dst)
