"""When is a source still the file a plan was made from?

``verify_sources=fast`` (the default) pins size, mtime and a hash of the header: it
reads no tensor data and catches a file replaced by another training run, but not a
copy made with its mtime preserved (``cp -p``, ``rsync -a``) whose values changed
while its size and header stayed the same. ``verify_sources=hash`` also pins the
sha256 of every byte: it reads the whole file (disk or sha256 speed) and promises equal
bytes; then mtime is not compared, so a fresh copy of the same file still matches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from torchgraft.checkpoints import Reader
from torchgraft.core.tensors import TensorInfo

_FAST = ("size", "mtime_ns", "header_sha256")
_HASHED = ("size", "header_sha256", "content_sha256")


def pins_content(fingerprint: Mapping) -> bool:
    return "content_sha256" in fingerprint


def changed(pinned: Mapping, reader: Reader) -> list[str]:
    """The fingerprint fields of ``reader``'s file that differ from ``pinned`` (the cheap
    ones first: the content is hashed only when they all match)."""
    now = reader.fingerprint()
    if not pins_content(pinned):
        return [k for k in _FAST if now.get(k) != pinned.get(k)]
    differ = [k for k in _HASHED[:2] if now.get(k) != pinned.get(k)]
    if not differ and reader.content_sha256() != pinned["content_sha256"]:
        differ.append("content_sha256")
    return differ


def differences(old: Mapping, new: Mapping) -> list[str]:
    """Fields two pinned fingerprints disagree on (mtime not counted when both pin the content)."""
    fields = _HASHED if pins_content(old) and pins_content(new) else (*_FAST, "content_sha256")
    return [k for k in fields if old.get(k) != new.get(k)]


def inventory_sha256(infos: Sequence[TensorInfo]) -> str:
    """The target's structure as the plan pins it: keys, shapes, dtypes and kinds, in order."""
    rows = [(t.key, t.shape, t.dtype, t.kind) for t in infos]  # tuples dump as JSON arrays
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
