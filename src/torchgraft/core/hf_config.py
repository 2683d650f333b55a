"""A transformers target's own config files: ``config.json`` (and ``generation_config.json``
when the model generates), the bytes its ``save_pretrained`` writes beside the weights,
made by the model's config objects themselves, without writing any weight.

Planning hashes them (the plan lists them, so review sees them); execution makes them
again from the same target and writes them only if they are the bytes the plan names.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

CONFIG_NAMES = ("config.json", "generation_config.json")


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel``; never imports anything.

    Asked of ``transformers.modeling_utils``, not of ``transformers``: the package is
    lazy, and its ``PreTrainedModel`` attribute imports the modeling code (4 s of CPU
    here, torch's compiler and export included) for any target, a ConvNet too, once
    anything imported ``transformers``. A PreTrainedModel exists only once that module
    is loaded."""
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(model, modeling.PreTrainedModel)


def config_files(model: nn.Module, dtype: str | None = None) -> dict[str, bytes]:
    """``{name: bytes}`` of the config files ``model.save_pretrained`` writes, as it writes
    them: the config with ``architectures`` and ``dtype`` set (``dtype``: the written
    tensors' floating dtype when the output casts them), the generation config if the
    model generates. The model itself is left as it was."""
    config = copy.deepcopy(model.config)
    config.dtype = dtype or str(model.dtype).split(".")[1]
    config.architectures = [type(model).__name__]
    with tempfile.TemporaryDirectory(prefix="torchgraft-config-") as tmp:
        config.save_pretrained(tmp)
        generation = getattr(model, "generation_config", None)
        if model.can_generate() and generation is not None:
            generation.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.name in CONFIG_NAMES}
