"""Plans as text for people: the dry-run printout and ``plan.txt``.

Kept apart from the plan itself so the review tooling can add grouped and markdown
renderings without touching planning."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from torchgraft.plan import Entry, Plan, Piece
from torchgraft.tensors import itemsize, short_dtype
from torchgraft.transforms import describe as describe_transform


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def group_keys(keys: Iterable[str]) -> list[str]:
    """``fc1.weight, fc1.bias`` -> ``fc1.{weight,bias}``: siblings share one item (first-seen order)."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parent, dot, leaf = key.rpartition(".")
        groups.setdefault(parent + dot, []).append(leaf)
    out = []
    for prefix, leaves in groups.items():
        out.append(prefix + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"))
    return out


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    n = itemsize(dtype)
    for d in shape:
        n *= d
    return n


def piece_text(piece: Piece, entry: Entry) -> str:
    reads = " + ".join(f"{r.source}:{r.key}{r.region or ''}" for r in piece.reads)
    if len(piece.reads) > 1:
        merge = piece.merge if piece.merge == "mean" else f"weights {piece.merge['weights']}"
        reads = f"{merge}({reads})"
    text = f"{piece.region + ' ' if piece.region else ''}← {reads}"
    steps = [describe_transform(t) for t in piece.transforms]
    source_dtype = piece.reads[0].dtype
    if not any(isinstance(t, dict) and "cast" in t for t in piece.transforms) and source_dtype != entry.dtype:
        steps.append(f"{short_dtype(source_dtype)}→{short_dtype(entry.dtype)}")
    if steps:
        text += " | " + ", ".join(steps)
    return text


def origin_text(entry: Entry) -> str:
    if entry.kept:
        return "keep"
    parts = [piece_text(p, entry) for p in entry.pieces]
    parts += [f"{region} keep" for region in entry.uncovered]
    return "; ".join(parts)


def _rules(entry: Entry) -> str:
    rules = list(dict.fromkeys(p.rule for p in entry.pieces))
    return ",".join(rules)


def _target_text(plan: Plan) -> str:
    spec = plan.target.spec
    if spec is None:
        base = f" patched from base '{plan.target.base}'" if plan.target.base else ""
        return f"no model class: the tensors the rules produce{base}"
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in spec.items() if k != "_target_")
    initial = f"initial values from base '{plan.target.base}'" if plan.target.base else f"seed {plan.target.seed}"
    return f"{spec['_target_']}({args})  {initial}"


def render(plan: Plan) -> str:
    """One line per target tensor (shape, dtype, origin or keep, rule), the unused source
    tensors, then a summary of counts and bytes."""
    lines = [f"# torchgraft plan {plan.sha256[:12]}  (torchgraft {plan.version})", f"target  {_target_text(plan)}"]
    for s in plan.sources:
        nested = f" key={s.key}" if s.key else ""
        lines.append(f"source  {s.name} = {s.path}  ({s.format}{nested}, {human_bytes(s.fingerprint['size'])})")
    lines.append("")
    rows = [(e.key, shape_text(e.shape), short_dtype(e.dtype), origin_text(e), _rules(e)) for e in plan.entries]
    widths = [min(max((len(r[i]) for r in rows), default=0), 56) for i in range(3)]
    for key, shape, dtype, origin, rule in rows:
        line = f"{key:<{widths[0]}}  {shape:<{widths[1]}}  {dtype:<{widths[2]}}  {origin}"
        lines.append(f"{line}  ({rule})" if rule else line)
    if plan.skipped:
        lines += ["", f"skipped under policy.mismatch=skip ({len(plan.skipped)}):"]
        lines += [f"  {s.key}  ({s.rule}): {s.reason}" for s in plan.skipped]
    if plan.unused:
        lines += ["", f"unused source tensors ({len(plan.unused)}):"]
        lines += [f"  {u.source}:{u.key}  {shape_text(u.shape)}  {short_dtype(u.dtype)}" for u in plan.unused]
    lines += ["", summary(plan)]
    return "\n".join(lines) + "\n"


def summary(plan: Plan) -> str:
    assigned = [e for e in plan.entries if not e.kept]
    kept = [e for e in plan.entries if e.kept]
    partial = sum(1 for e in plan.entries if e.uncovered)
    size = lambda entries: human_bytes(sum(_nbytes(e.shape, e.dtype) for e in entries))  # noqa: E731
    text = (
        f"{len(plan.entries)} target tensors ({size(plan.entries)}): {len(assigned)} assigned ({size(assigned)})"
        f"{f', {partial} of them in part' if partial else ''}, {len(kept)} kept ({size(kept)})"
    )
    if plan.skipped:
        text += f", {len(plan.skipped)} skipped"
    unused_bytes = human_bytes(sum(_nbytes(u.shape, u.dtype) for u in plan.unused))
    return text + f"; {len(plan.unused)} source tensors unused ({unused_bytes})"
