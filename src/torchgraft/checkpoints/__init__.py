"""Checkpoint I/O behind one small interface: a format is one ``Reader`` (and maybe one
``Writer``) module.

Reading: ``open_checkpoint(path, format=..., key=..., field=...) -> Reader``. A reader
opens its file(s) once and everything below goes through those descriptors, so what
is checked is what is read, even if another file is renamed over its path:

- from headers: ``inventory()``, ``by_key()``, ``metadata()``;
- identity, as the files held open are now: ``fingerprint()`` (size, mtime, header
  hash), ``content_sha256()`` (every byte), ``replaced()`` (files whose path now
  names another file);
- data: ``read(key, index=None)`` (a tensor, or a region of it), ``byte_range(key)``
  (where its bytes lie, for a kernel copy: valid until ``close()``).

Writing: ``with atomic_output(path, overwrite=...) as tmp:`` then
``open_writer(tmp, infos, metadata)``, ``write(key, tensor)`` or
``copy(key, reader.byte_range(key))`` in declared order, ``close()``.
"""

from torchgraft.checkpoints.atomic import atomic_output, final_name
from torchgraft.checkpoints.base import Reader
from torchgraft.checkpoints.detect import FORMATS, detect_format, open_checkpoint
from torchgraft.checkpoints.writers import Writer, open_writer

__all__ = ["FORMATS", "Reader", "Writer", "atomic_output", "detect_format", "final_name",
           "open_checkpoint", "open_writer"]
