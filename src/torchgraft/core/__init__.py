"""The lowest layer: what every other layer shares.

Owns the error types (``errors``), tensor descriptions and the dtype table
(``tensors``), typed reads of config fields (``fields``), user-facing text helpers
(``text``: sizes, shapes, "did you mean"), the one dotted-path importer (``imports``),
streamed hashing (``hashing``), the collector and allocator controls (``heap``), and
the target model: import, bind arguments, build on the meta device, inventory
(``target``). Imports nothing else of torchgraft.
"""
