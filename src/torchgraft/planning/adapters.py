"""PEFT LoRA adapters on a bulk rule: each tensor the rule takes that an adapter targets
becomes ``W + s·(B @ A)`` (transposed for ``fan_in_fan_out`` and embeddings), and a
``modules_to_save`` tensor replaces the base's. Shapes and ranks are checked here, from
headers; the executor (``execution/merges.py``) only multiplies.

PEFT's keys (``base_model.model.<module>.lora_A.weight``) are mapped to the source's
keys (``<module>.weight``) before the rule renames anything.
"""

from __future__ import annotations

from collections.abc import Mapping

from torchgraft.checkpoints import Reader
from torchgraft.checkpoints.peft import PREFIX
from torchgraft.core.errors import PlanError
from torchgraft.core.merge_methods import LORA
from torchgraft.core.text import shape_text
from torchgraft.plans.types import Read
from torchgraft.recipe.parse import BulkRule

# adapter key suffix -> (factor, embedding?)
_FACTORS = {".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False),
            ".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True)}


class _Adapter:
    """One adapter's tensors, by the source key they apply to."""

    def __init__(self, name: str, scale: float, reader: Reader, field: str):
        if reader.format != "peft":
            raise PlanError(field, f"'{name}' is not a PEFT adapter (its format is {reader.format}; an adapter is a "
                                   "folder with adapter_config.json and adapter_model.safetensors)")
        self.name, self.scale, self.field = name, scale, field
        self.settings = reader.settings
        self.infos = reader.by_key()
        self.factors: dict[str, dict[str, str]] = {}  # source key -> {"A": key, "B": key, "module": name, "embedding": ""}
        self.replacements: dict[str, str] = {}  # source key -> adapter key (modules_to_save)
        for key in self.infos:
            if not key.startswith(PREFIX):
                raise PlanError(field, f"{name}:{key} is not a PEFT adapter key (no '{PREFIX}' prefix)")
            rest = key[len(PREFIX):]
            suffix = next((s for s in _FACTORS if rest.endswith(s)), None)
            if suffix is None:
                module = rest.rpartition(".")[0]
                if not any(module == m or module.endswith("." + m) for m in self.settings.modules_to_save):
                    raise PlanError(field, f"{name}:{key} is neither a LoRA factor (lora_A, lora_B) nor in modules_to_save")
                self.replacements[rest] = key
                continue
            module = rest[: -len(suffix)]
            factor, embedding = _FACTORS[suffix]
            entry = self.factors.setdefault(module + ".weight", {"module": module})
            entry[factor] = key
            entry["embedding"] = "yes" if embedding else ""
        for entry in self.factors.values():
            for factor in ("A", "B"):
                if factor not in entry:
                    other = entry["B" if factor == "A" else "A"]
                    raise PlanError(field, f"{name}:{other} has no lora_{factor} beside it")
        self.used: set[str] = set()

    def lora(self, weight: Read, shape: tuple[int, ...]) -> tuple[tuple[Read, Read], dict]:
        """The reads of A and B for ``weight`` and their part of the merge spec, checked."""
        entry = self.factors[weight.key]
        a, b = (Read(self.name, entry[f], self.infos[entry[f]].shape, self.infos[entry[f]].dtype) for f in ("A", "B"))
        r, scale = self.settings.rank_and_scale(entry["module"])
        transpose = bool(entry["embedding"]) or self.settings.fan_in_fan_out
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise PlanError(self.field, f"{self.name}:{a.key} {shape_text(a.shape)} and {b.key} {shape_text(b.shape)} "
                                        "are not the two factors of a LoRA update (conv LoRA is not supported)")
        if a.shape[0] != r:
            raise PlanError(self.field, f"{self.name}:{a.key} has rank {a.shape[0]}, but adapter_config.json gives "
                                        f"{entry['module']} r={r}")
        delta = (a.shape[1], b.shape[0]) if transpose else (b.shape[0], a.shape[1])
        if tuple(shape) != delta:
            raise PlanError(self.field, f"{self.name}:{b.key} @ lora_A gives {shape_text(delta)}"
                                        f"{' (transposed)' if transpose else ''}, but {weight.source}:{weight.key} "
                                        f"has shape {shape_text(shape)}")
        self.used.add(weight.key)
        return (a, b), {"source": self.name, "scale": self.scale * scale, "transpose": transpose}

    def unused(self) -> list[str]:
        return [k for k in (*self.factors, *self.replacements) if k not in self.used]


class RuleAdapters:
    """The adapters of one bulk rule, applied tensor by tensor (``apply``)."""

    def __init__(self, rule: BulkRule, readers: Mapping[str, Reader], unused_policy: str):
        self.field = f"{rule.field}.adapter"
        if len(rule.sources) != 1:
            raise PlanError(self.field, f"applies to a rule of one source (this one merges {len(rule.sources)})")
        if rule.sources[0] in (name for name, _ in rule.adapters):
            raise PlanError(self.field, f"'{rule.sources[0]}' is the rule's source, not an adapter")
        self.adapters = [_Adapter(name, scale, readers[name], self.field) for name, scale in rule.adapters]
        self.unused_policy = unused_policy

    def apply(self, weight: Read, shape: tuple[int, ...]) -> tuple[tuple[Read, ...], object]:
        """The reads and merge spec of one tensor the rule takes: itself, replaced, or with LoRA updates."""
        replaced = [a for a in self.adapters if weight.key in a.replacements]
        updates = [a for a in self.adapters if weight.key in a.factors]
        if replaced and (len(replaced) > 1 or updates):
            names = ", ".join(a.name for a in replaced + updates)
            raise PlanError(self.field, f"{weight.source}:{weight.key} is replaced by a modules_to_save tensor and also "
                                        f"changed by another adapter ({names})")
        if replaced:
            adapter = replaced[0]
            adapter.used.add(weight.key)
            key = adapter.replacements[weight.key]
            info = adapter.infos[key]
            return (Read(adapter.name, key, info.shape, info.dtype),), None
        if not updates:
            return (weight,), None
        reads, specs = [weight], []
        for adapter in updates:
            factors, spec = adapter.lora(weight, shape)
            reads += factors
            specs.append(spec)
        return tuple(reads), {"method": LORA, "adapters": specs}

    def check_used(self) -> None:
        """An adapter tensor whose module the rule does not take is an error (policy.unused: ignore allows it)."""
        if self.unused_policy == "ignore":
            return
        for adapter in self.adapters:
            missing = adapter.unused()
            if missing:
                key = missing[0]
                entry = adapter.factors.get(key)
                shown = entry["A"] if entry else adapter.replacements[key]
                raise PlanError(self.field, f"{adapter.name}:{shown} applies to '{key}', which this rule does not take "
                                            f"({len(missing)} such adapter tensor{'s' if len(missing) != 1 else ''}; "
                                            "set policy.unused=ignore to leave them out)")
