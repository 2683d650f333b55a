"""Float casts in numpy, bit-identical to torch's, so a plan that only casts imports no torch.

Importing torch costs ~1.4 s and ~220 MiB; a float32 checkpoint cast to bfloat16 or
float16 needs none of it: each output tensor is its source's bytes, rounded. The rules
are torch's own on this CPU (checked bit for bit by a property test against torch,
NaN payloads, infinities, subnormals and ties included):

- float32 -> bfloat16: round to nearest, ties to even, on the bits; every NaN becomes 0xFFFF.
- float32 -> float16: numpy's rounding (nearest, ties to even, subnormals, overflow to
  infinity); a NaN keeps its sign and top payload bits and is made quiet, as the F16C
  instruction torch uses does (numpy keeps a signalling NaN signalling instead).

The source is read ``CHUNK`` items at a time into one buffer, so memory is the output
tensor plus one chunk.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from torchgraft.checkpoints.byteranges import ByteRange

if TYPE_CHECKING:
    import numpy as np  # imported where a cast runs: a dry run does without its 0.2 s

CASTS = frozenset({("float32", "bfloat16"), ("float32", "float16")})
CHUNK = 1 << 18  # items per read: 1 MiB of float32, which stays in cache through the passes (3x faster than 16 MiB)


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
    buffer = np.empty(min(count, CHUNK), dtype=np.uint32)
    view = memoryview(buffer).cast("B")
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        _pread_into(where.fd, view[:n * 4], where.offset + start * 4, where)
        out[start:start + n] = cast_float32(buffer[:n], dst)
    return out.view(np.uint8)


def _pread_into(fd: int, view: memoryview, offset: int, where: ByteRange) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, f"{where.path}: ended early (truncated since it was opened?)")
        done += n
