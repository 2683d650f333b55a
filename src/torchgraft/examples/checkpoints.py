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
from safetensors.torch import save_file

from torchgraft.core.errors import RecipeError
from torchgraft.core.version import __version__
from torchgraft.examples import ConvNet, LinearProbe, LitClassifier, SequentialNet
from torchgraft.examples.bert import BertForPreTraining
from torchgraft.examples.encoders import TextEncoder, TinyViT
from torchgraft.examples.gpt import GPT2LMHeadModel


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


def _random_state(make: Callable[[], torch.nn.Module], seed: int, spread: float = 0.1) -> dict[str, torch.Tensor]:
    """Every floating parameter drawn at random (LayerNorm scales around 1), so that a port
    that drops a bias or swaps two tensors changes the numbers: fresh-init zeros and
    ones would hide it."""
    torch.manual_seed(seed)
    model = make()
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                around = 1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0
                p.copy_(around + spread * torch.randn_like(p))
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _gpt2(path: Path) -> None:
    """Hugging Face's GPT-2 layout; like HF files it leaves out ``lm_head.weight`` (tied)."""
    state = _random_state(GPT2LMHeadModel, seed=10)
    del state["lm_head.weight"]
    _save_safetensors(state, path)


def _bert(path: Path) -> None:
    """``bert-base-uncased``'s layout (encoder under ``bert.``, heads under ``cls.``), as a torch .bin."""
    torch.save(_random_state(BertForPreTraining, seed=11), path)


def _encoder_12(path: Path) -> None:
    _save_safetensors(_random_state(lambda: TextEncoder(depth=12), seed=12), path)


def _vit(path: Path) -> None:
    _save_safetensors(_random_state(lambda: TinyViT(img_size=32, patch_size=8), seed=13), path)


def _training_run(step: int) -> Callable[[Path], None]:
    """One checkpoint of a training run: the weights drift a little every 1000 steps, as
    the last checkpoints of a run do; saved the way training scripts save them."""

    def build(path: Path) -> None:
        state = _random_state(lambda: SequentialNet(num_classes=10, hidden=32), seed=14)
        generator = torch.Generator().manual_seed(step)
        for key, value in state.items():
            if value.is_floating_point():
                value = value + 0.01 * torch.randn(value.shape, generator=generator)
                state[key] = value.abs() if key.endswith("running_var") else value
            elif key.endswith("num_batches_tracked"):
                state[key] = torch.tensor(step)
        torch.save({"model": state, "step": step, "optimizer": {"lr": 0.01, "momentum": 0.9}}, path)

    return build


HF_LLAMA = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "max_position_embeddings": 64}


def hf_llama_config():
    """The tiny grouped-query ``transformers.LlamaConfig`` of the ``hf_llama`` example."""
    try:
        import transformers
    except ImportError:
        raise RecipeError(None, "the hf_llama example needs transformers (pip install 'torchgraft[ports]')") from None
    return transformers.LlamaConfig(**HF_LLAMA)


def _hf_llama(path: Path) -> None:
    """A Hugging Face model folder: ``config.json`` and ``model.safetensors`` of a random
    ``LlamaForCausalLM`` (4 heads sharing 2 key/value heads). Weights spread wide enough
    that attention is far from uniform, so a wrong rotary layout shows in the logits."""
    import transformers

    config = hf_llama_config()
    path.mkdir()
    _save_safetensors(_random_state(lambda: transformers.LlamaForCausalLM(config), seed=15, spread=0.5), path / "model.safetensors")
    config.to_json_file(str(path / "config.json"))


def _meta_llama(path: Path) -> None:
    from torchgraft.examples.llama import MetaLlama

    _save_safetensors(_random_state(lambda: MetaLlama(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=96),
                                    seed=16, spread=0.5), path)


HF_MIXTRAL = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "max_position_embeddings": 64}
MOE_LLAMA = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 128, "hidden_dim": 48, "n_experts": 4, "top_k": 2}


def hf_mixtral_config():
    """The tiny ``transformers.MixtralConfig`` of the ``hf_mixtral`` example (4 experts, top 2)."""
    try:
        import transformers
    except ImportError:
        raise RecipeError(None, "the hf_mixtral example needs transformers (pip install 'torchgraft[ports]')") from None
    return transformers.MixtralConfig(**HF_MIXTRAL)


def _hf_mixtral(path: Path) -> None:
    """A Hugging Face model folder of a random ``MixtralForCausalLM``, written by its own
    ``save_pretrained``: transformers holds the experts stacked in memory but writes one
    ``block_sparse_moe.experts.{e}.w1.weight`` per expert, as Mixtral's files have them."""
    import transformers

    torch.manual_seed(17)
    model = transformers.MixtralForCausalLM(hf_mixtral_config())
    state = _random_state(lambda: model, seed=17, spread=0.5)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(path))


def _moe_llama(path: Path) -> None:
    from torchgraft.examples.moe import MoELlama

    _save_safetensors(_random_state(lambda: MoELlama(**MOE_LLAMA), seed=18, spread=0.5), path)


HF_BERT = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64,
           "max_position_embeddings": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _hf_bert(path: Path) -> None:
    """A Hugging Face model folder of a random 4-layer ``BertModel``, saved by transformers."""
    import transformers

    model = transformers.BertModel(transformers.BertConfig(**HF_BERT))
    model.load_state_dict(_random_state(lambda: model, seed=19), strict=True)
    model.save_pretrained(str(path))


EXAMPLES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "convnet": ("convnet.safetensors", _convnet),
    "sequential": ("sequential.pt", _sequential),
    "linear_probe": ("linear_probe.safetensors", _linear_probe),
    "lightning": ("lightning.ckpt", _lightning),
    "gpt2": ("gpt2.safetensors", _gpt2),
    "bert": ("bert.bin", _bert),
    "encoder_12": ("encoder_12.safetensors", _encoder_12),
    "vit": ("vit.safetensors", _vit),
    "hf_llama": ("hf_llama", _hf_llama),
    "meta_llama": ("meta_llama.safetensors", _meta_llama),
    "hf_mixtral": ("hf_mixtral", _hf_mixtral),
    "moe_llama": ("moe_llama.safetensors", _moe_llama),
    "hf_bert": ("hf_bert", _hf_bert),
    **{f"run_step{step}": (f"run_step{step}.pt", _training_run(step)) for step in (3000, 4000, 5000)},
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
            _publish_once(built, path)
    return str(path)


def _publish_once(built: Path, path: Path) -> None:
    """Move ``built`` to ``path`` unless another process building the same example got
    there first. An example in use is never replaced: the bytes would be the same, but
    not the file identity that a plan made from it pinned."""
    try:
        if built.is_dir():
            os.rename(built, path)  # fails if another build's folder is there (not empty)
        else:
            os.link(built, path)  # fails if another build's file is there
    except FileExistsError:
        pass
    except OSError:
        if not path.exists():
            raise
