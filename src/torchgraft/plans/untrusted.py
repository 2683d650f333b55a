"""The checks a plan read from a file passes before anything uses it.

A plan file is attacker-written (docs/security.md): its sha256 is a self-hash that
anyone can recompute, so "unedited" proves nothing about who wrote it. Every name,
path and number in it is checked here as the planner would have made it: sources
referenced exist, names are unique, regions fit their shapes, transforms compile and
give the shape the entry says, merges have one weight per read, copied file names are
plain names, sizes are bounded, and the target spec names nothing a plan may not call.
Semantic checks run once per entry form (entries equal but for their keys).
"""

from __future__ import annotations

import math
import os
from typing import Any

from torchgraft.core.errors import GraftError, PlanError
from torchgraft.core.hf_config import CONFIG_NAMES
from torchgraft.core.specs import check_plan_spec
from torchgraft.core.tensors import itemsize
from torchgraft.keys.regions import Box, Region
from torchgraft.plans.types import Entry, Plan
from torchgraft.transforms import compile_transform
from torchgraft.transforms.core import check_size

MAX_BYTES = 2**62  # no tensor, file or shard in a plan is larger
MAX_DIMS = 64
_SEED = (-(2**63), 2**64)  # what torch.manual_seed accepts


def plain_name(name: str) -> bool:
    """A file name inside its directory: no separator, not ``.``/``..``, no NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0")) \
        and os.path.basename(name) == name


def check_plan(plan: Plan) -> None:
    """Refuse (PlanError naming the plan field) a plan the planner could not have made."""
    if plan.target.spec is not None:
        check_plan_spec(plan.target.spec, imports=False)  # review.check_target imports
    seed = plan.target.seed
    if isinstance(seed, bool) or not _SEED[0] <= seed < _SEED[1]:
        raise PlanError("target.seed", f"{seed if seed.bit_length() < 100 else 'a huge number'} is out of range "
                                       "(a seed is a 64-bit integer)")
    names = _check_sources(plan)
    if plan.target.base is not None and plan.target.base not in names:
        raise PlanError("target.base", f"names no source of the plan: {plan.target.base!r}")
    seen: set[str] = set()
    for i, entry in enumerate(plan.entries):
        if entry.key in seen:
            raise PlanError(f"entries[{i}].key", f"{_shown(entry.key)} appears twice")
        seen.add(entry.key)
        for r in (r for p in entry.pieces for r in p.reads):
            if r.source not in names:
                raise PlanError(f"entries[{i}]", f"reads from source {_shown(r.source)}, which the plan does not have")
    if "__metadata__" in seen:
        raise PlanError("entries", "'__metadata__' is not a tensor name safetensors can store")
    for first in plan.entry_forms.firsts:
        _check_entry(plan.entries[first], f"entries[{first}]")
    for i, u in enumerate(plan.unused):
        if u.source not in names:
            raise PlanError(f"unused[{i}].source", f"names no source of the plan: {_shown(u.source)}")
    _check_layout(plan, names)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:200] + "...")


def _check_sources(plan: Plan) -> dict[str, str]:
    names: dict[str, str] = {}
    for i, s in enumerate(plan.sources):
        at = f"sources[{i}]"
        if s.name in names:
            raise PlanError(f"{at}.name", f"{_shown(s.name)} appears twice")
        if "\0" in s.path:
            raise PlanError(f"{at}.path", "contains a NUL character")
        for k in ("size", "mtime_ns"):
            if abs(s.fingerprint[k]) >= MAX_BYTES * 4:
                raise PlanError(f"{at}.fingerprint.{k}", "is out of range")
        names[s.name] = s.format
    return names


def _check_shape(shape: tuple, dtype: str, at: str) -> None:
    if len(shape) > MAX_DIMS or any(d >= MAX_BYTES for d in shape) or math.prod(shape) * itemsize(dtype) > MAX_BYTES:
        raise PlanError(at, f"a {len(shape)}-d shape whose size is out of range")


def _box(region: str | None, shape: tuple, at: str) -> Box:
    if region is None:
        return Box.full(shape)
    try:
        return Region.parse(region).box(shape)
    except ValueError as err:
        raise PlanError(at, str(err)) from None


def _check_entry(entry: Entry, at: str) -> None:
    _check_shape(entry.shape, entry.dtype, f"{at}.shape")
    for region in entry.uncovered:
        _box(region, entry.shape, f"{at}.uncovered")
    boxes: list[Box] = []
    for j, piece in enumerate(entry.pieces):
        where = f"{at}.pieces[{j}]"
        box = _box(piece.region, entry.shape, f"{where}.region")
        if any(box.overlaps(b) for b in boxes):
            raise PlanError(f"{where}.region", "overlaps another piece of the same tensor")
        boxes.append(box)
        shape, dtype = None, None
        for k, read in enumerate(piece.reads):
            _check_shape(read.shape, read.dtype, f"{where}.reads[{k}].shape")
            got = _box(read.region, read.shape, f"{where}.reads[{k}].region").shape
            if shape is not None and (got, read.dtype) != (shape, dtype):
                raise PlanError(f"{where}.reads[{k}]", "merged reads differ in shape or dtype")
            shape, dtype = got, read.dtype
        _check_merge(piece.merge, len(piece.reads), f"{where}.merge")
        for k, spec in enumerate(piece.transforms):
            try:
                transform = compile_transform(spec, f"{where}.transforms[{k}]")
                shape, dtype = transform.out_shape(tuple(shape)), transform.out_dtype(dtype)
                check_size(shape)
            except GraftError as err:
                raise PlanError(err.field, err.message) from None
            except ValueError as err:
                raise PlanError(f"{where}.transforms[{k}]", str(err)) from None
            if transform.reads_initial and k != len(piece.transforms) - 1:
                raise PlanError(f"{where}.transforms[{k}]", "fills from initial values but is not the last transform")
            _check_shape(tuple(shape), dtype, f"{where}.transforms[{k}]")
        if tuple(shape) != box.shape:
            raise PlanError(where, f"gives a tensor of shape {list(shape)} for a destination of shape {list(box.shape)}")


def _check_merge(merge: Any, reads: int, at: str) -> None:
    if reads == 1:
        if merge is not None:
            raise PlanError(at, "a merge needs at least two reads")
        return
    if merge == "mean":
        return
    weights = merge.get("weights") if isinstance(merge, dict) else None
    if not isinstance(weights, list) or len(weights) != reads or set(merge) != {"weights"}:
        raise PlanError(at, f"expected 'mean' or one weight per read ({reads})")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise PlanError(at, "weights must be finite numbers")


def _check_layout(plan: Plan, names: dict[str, str]) -> None:
    layout = plan.layout
    if layout.shard_size is not None and layout.shard_size > MAX_BYTES:
        raise PlanError("output.shard_size", "is out of range")
    seen: set[str] = set()
    for i, f in enumerate(layout.files):
        at = f"output.files[{i}]"
        if not plain_name(f.name):
            raise PlanError(f"{at}.name", f"{_shown(f.name)} is not a plain file name (no directories, '..' or NUL)")
        if f.name in seen:
            raise PlanError(f"{at}.name", f"{_shown(f.name)} appears twice")
        seen.add(f.name)
        if f.folder is not None:
            if not os.path.isabs(f.folder) or "\0" in f.folder:
                raise PlanError(f"{at}.folder", f"{_shown(f.folder)} is not an absolute directory path")
        elif names.get(f.source) != "hf":
            raise PlanError(f"{at}.source", f"names no model-directory source of the plan: {_shown(f.source)}")
        if f.size > MAX_BYTES:
            raise PlanError(f"{at}.size", "is out of range")
    for i, c in enumerate(layout.config):
        at = f"output.config[{i}]"
        if c.name not in CONFIG_NAMES:
            raise PlanError(f"{at}.name", f"{_shown(c.name)} is not a config file torchgraft writes "
                                          f"({', '.join(CONFIG_NAMES)})")
        if c.name in seen:
            raise PlanError(f"{at}.name", f"{_shown(c.name)} appears twice")
        seen.add(c.name)
        if c.size > MAX_BYTES:
            raise PlanError(f"{at}.size", "is out of range")
