"""torchgraft: declarative, reviewable transfer of tensors between PyTorch checkpoints.

    plan = torchgraft.plan("recipes/conv_only.yaml")   # headers only
    print(torchgraft.render(plan))                      # review it
    torchgraft.execute(plan, "model.safetensors")       # stream, write atomically, verify
    torchgraft.load_into(model, "recipes/conv_only.yaml")
"""

from torchgraft.api import execute, load_into, plan, render
from torchgraft.core.errors import GraftError
from torchgraft.core.version import __version__

__all__ = ["plan", "render", "execute", "load_into", "GraftError", "__version__"]
