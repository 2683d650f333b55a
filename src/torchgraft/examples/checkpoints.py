"""Deterministic example checkpoints, so the bundled recipes run offline on a fresh clone.

A recipe names one as ``${example:NAME}``; the resolver builds it on first use (seeded,
so every machine gets the same values) into a cache folder and returns its path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from torchgraft import __version__
from torchgraft.errors import RecipeError
from torchgraft.examples import ConvNet, LinearProbe, LitClassifier, SequentialNet


def _state_dict(make: Callable[[], torch.nn.Module], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone().contiguous() for k, v in make().state_dict().items()}


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})


def _convnet(path: Path) -> None:
    _save_safetensors(_state_dict(lambda: ConvNet(num_classes=10), seed=1), path)


def _sequential(path: Path) -> None:
    torch.save(_state_dict(lambda: SequentialNet(num_classes=10, hidden=32), seed=2), path)


def _linear_probe(path: Path) -> None:
    _save_safetensors(_state_dict(lambda: LinearProbe(in_features=12, num_classes=4), seed=3), path)


def _lightning(path: Path) -> None:
    """The layout ``pytorch_lightning`` writes: weights under ``state_dict``, with extras."""
    checkpoint = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": _state_dict(lambda: LitClassifier(num_classes=10), seed=4),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]}],
        "hyper_parameters": {"num_classes": 10, "lr": 0.001},
    }
    torch.save(checkpoint, path)


EXAMPLES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "convnet": ("convnet.safetensors", _convnet),
    "sequential": ("sequential.pt", _sequential),
    "linear_probe": ("linear_probe.safetensors", _linear_probe),
    "lightning": ("lightning.ckpt", _lightning),
}


def examples_dir() -> Path:
    """``$TORCHGRAFT_EXAMPLES_DIR``, else a per-version folder in the user's cache."""
    if env := os.environ.get("TORCHGRAFT_EXAMPLES_DIR"):
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "torchgraft" / f"examples-{__version__}"


def example_path(name: str) -> str:
    """The path of example checkpoint ``name``, built (atomically) if it is not there yet."""
    if name not in EXAMPLES:
        known = ", ".join(sorted(EXAMPLES))
        raise RecipeError(None, f"unknown example checkpoint '{name}' (known: {known})")
    filename, build = EXAMPLES[name]
    path = examples_dir() / filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build under the final name (torch.save names its zip root after the file's stem),
        # in a private folder, then rename: the bytes are the same on every machine.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
            built = Path(tmp) / filename
            build(built)
            os.replace(built, path)
    return str(path)


def register_resolver() -> None:
    """Make ``${example:NAME}`` available to recipes (idempotent)."""
    if not OmegaConf.has_resolver("example"):
        OmegaConf.register_new_resolver("example", example_path)
