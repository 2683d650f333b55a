"""Reader for a PEFT adapter folder: ``adapter_config.json`` beside ``adapter_model.safetensors``.

The tensors are the adapter file's, under PEFT's own keys
(``base_model.model.<module>.lora_A.weight``); ``settings`` is the validated LoRA part of
the config. The config is attacker-written like any checkpoint: every field used is
checked, the rest is ignored, and adapter types other than LoRA are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints.base import Reader
from torchgraft.checkpoints.byteranges import ByteRange, OpenFile
from torchgraft.checkpoints.safetensors_file import SafetensorsReader

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the base model
# Options that change the math of a LoRA merge and are not implemented: refused, not ignored.
_UNSUPPORTED = ("use_dora", "lora_bias", "use_qalora", "use_bdlora")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def is_adapter_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


@dataclass(frozen=True)
class LoraSettings:
    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: tuple[tuple[str, int], ...] = ()  # (module name, r), in the config's order
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    modules_to_save: tuple[str, ...] = ()

    def rank_and_scale(self, module: str) -> tuple[int, float]:
        """The rank and the scaling ``s`` of ``W + s·(B @ A)`` for a module, as PEFT computes them."""
        r = _pattern_value(self.rank_pattern, module, self.r)
        alpha = _pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)


def _pattern_value(pattern, module: str, default):
    """PEFT's ``get_pattern_key``: the first key that is the module's name or a dotted suffix of it."""
    for key, value in pattern:
        if module == key or module.endswith("." + key):
            return value
    return default


class PeftReader(Reader):
    format = "peft"

    def __init__(self, path: Path, *, field: str, shown: str | None = None):
        super().__init__(path, field=field, shown=shown)
        if not is_adapter_dir(self.path):
            raise self._error(f"a PEFT adapter folder needs {CONFIG} and {WEIGHTS}")
        self._config: OpenFile | None = None
        self._weights: SafetensorsReader | None = None
        self._read_or_close(self._read_folder)

    def _read_folder(self) -> None:
        self._config = OpenFile.inside(self.path, CONFIG)
        self.settings = self._parse_config(self._config.read_all())
        self._weights = SafetensorsReader(self.path / WEIGHTS, field=self.field, shown=f"{self.shown.rstrip('/')}/{WEIGHTS}")
        self._set_inventory(self._weights.inventory())

    def _parse_config(self, raw: bytes) -> LoraSettings:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._error(f"{CONFIG} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise self._error(f"{CONFIG} is not a JSON object")
        kind = data.get("peft_type")
        if kind != "LORA":
            shown = kind if isinstance(kind, str) else json.dumps(kind)[:40]
            raise self._error(f"{CONFIG}: peft_type {shown} is not supported (only LORA adapters)")
        for name in _UNSUPPORTED:
            if data.get(name) not in (None, False):
                raise self._error(f"{CONFIG}: {name} is not supported (plain LoRA only)")
        r = data.get("r")
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise self._error(f"{CONFIG}: r must be a positive integer")
        alpha = data.get("lora_alpha", 8)
        if not _is_number(alpha):
            raise self._error(f"{CONFIG}: lora_alpha must be a finite number")
        flags = {}
        for name in ("use_rslora", "fan_in_fan_out"):
            value = data.get(name, False)
            if not isinstance(value, bool):
                raise self._error(f"{CONFIG}: {name} must be true or false")
            flags[name] = value
        ranks = self._pattern(data, "rank_pattern", lambda v: not isinstance(v, bool) and isinstance(v, int) and v > 0,
                              "a positive integer")
        alphas = self._pattern(data, "alpha_pattern", _is_number, "a finite number")
        saved = data.get("modules_to_save") or []
        if not isinstance(saved, list) or not all(isinstance(m, str) and _MODULE_NAME.fullmatch(m) for m in saved):
            raise self._error(f"{CONFIG}: modules_to_save must be a list of module names")
        return LoraSettings(r, float(alpha), rank_pattern=ranks, alpha_pattern=alphas,
                            modules_to_save=tuple(saved), **flags)

    def _pattern(self, data: dict, name: str, valid, expected: str) -> tuple:
        pattern = data.get(name) or {}
        if not isinstance(pattern, dict):
            raise self._error(f"{CONFIG}: {name} must be a mapping of module names")
        for key, value in pattern.items():
            if not _MODULE_NAME.fullmatch(key):
                # PEFT reads these keys as regular expressions; a file must not hand us one to run.
                raise self._error(f"{CONFIG}: {name} key {key[:60]!r} is not a module name "
                                  "(regular expressions are not supported)")
            if not valid(value):
                raise self._error(f"{CONFIG}: {name}.{key} must be {expected}")
        return tuple((k, float(v) if name == "alpha_pattern" else v) for k, v in pattern.items())

    def _files(self) -> list[OpenFile]:
        return ([self._config] if self._config else []) + (self._weights._files() if self._weights else [])

    def metadata(self) -> dict[str, str]:
        return self._weights.metadata()

    def _header_sha256(self) -> str:
        digest = hashlib.sha256(self._config.read_all())
        digest.update(self._weights.fingerprint()["header_sha256"].encode())
        return digest.hexdigest()

    def read(self, key: str, index: tuple | None = None) -> torch.Tensor:
        return self._weights.read(key, index)

    def byte_range(self, key: str) -> ByteRange | None:
        return self._weights.byte_range(key)

    def close(self) -> None:
        if self._weights is not None:
            self._weights.close()
        if self._config is not None:
            self._config.close()


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
