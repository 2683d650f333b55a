"""The command-line tools: argv -> library -> exit code. The only place with Hydra app state.

``graft`` (``graft``: the Hydra app), ``graft-inspect`` (``inspect``), ``graft-diff``
(``diff``) and the sweep summary callback (``sweep``). Everything they do is a call
into ``torchgraft.api`` or a lower layer.
"""
