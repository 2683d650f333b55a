"""Checkpoint I/O behind one small interface: a format is one ``Reader`` (and maybe one
``Writer``) module.

Reading: ``open_checkpoint(path, format=..., key=..., field=...) -> Reader`` with
``inventory()``, ``read(key, index)``, ``fingerprint()``, ``content_sha256()``,
``metadata()``. Writing: ``with atomic_output(path, overwrite=...) as tmp:`` then
``open_writer(tmp, infos, metadata)``, ``write(key, tensor)`` in declared order, ``close()``.
"""

from torchgraft.checkpoints.atomic import atomic_output, final_name
from torchgraft.checkpoints.base import Reader
from torchgraft.checkpoints.detect import FORMATS, detect_format, open_checkpoint
from torchgraft.checkpoints.writers import Writer, open_writer

__all__ = ["FORMATS", "Reader", "Writer", "atomic_output", "detect_format", "final_name",
           "open_checkpoint", "open_writer"]
