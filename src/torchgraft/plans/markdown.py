"""``plan.md``: the plan as Markdown to paste into a pull-request comment.

The facts a reviewer weighs first (target, sources, counts) are visible; long lists
fold into ``<details>`` sections, which GitHub and GitLab render collapsed.
"""

from __future__ import annotations

from torchgraft.core.text import human_bytes
from torchgraft.plans.flowchart import flowchart
from torchgraft.plans.text import nbytes, shown_path, source_stats, summary, table, target_text, unused_lines
from torchgraft.plans.types import Plan

OPEN_UP_TO = 30  # lines: a list this short is shown open


def _block(title: str, lines: list[str]) -> list[str]:
    opened = " open" if len(lines) <= OPEN_UP_TO else ""
    return [f"<details{opened}><summary>{title}</summary>", "", "```text", *lines, "```", "", "</details>", ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(plan: Plan) -> str:
    target, _, initial = target_text(plan).partition("  ")
    lines = [
        f"### torchgraft plan `{plan.sha256[:12]}`",
        "",
        *flowchart(plan),
        f"**Target** `{_cell(target)}`{', ' + initial if initial else ''} · torchgraft {plan.version}",
        "",
    ]
    if plan.sources:
        lines += ["| source | path | format | size | read | unused |", "|---|---|---|---|---|---|"]
        stats = source_stats(plan)
        for s in plan.sources:
            n_read, b_read, n_unused, b_unused = stats[s.name]
            nested = f" (key `{s.key}`)" if s.key else ""
            lines.append(
                f"| `{s.name}` | `{_cell(shown_path(s.path))}` | {s.format}{nested} | {human_bytes(s.fingerprint['size'])} "
                f"| {n_read} ({human_bytes(b_read)}) | {n_unused} ({human_bytes(b_unused)}) |"
            )
        lines.append("")
    lines += [summary(plan), ""]
    rows = table(plan)
    lines += _block(f"Transfer: {len(plan.entries)} target tensors in {len(rows)} lines", rows)
    if plan.skipped:
        skipped = [f"{s.key}  ({s.rule}): {s.reason}" for s in plan.skipped]
        lines += _block(f"Skipped under policy.mismatch=skip: {len(plan.skipped)}", skipped)
    if plan.unused:
        size = human_bytes(sum(nbytes(u.shape, u.dtype) for u in plan.unused))
        lines += _block(f"Unused source tensors: {len(plan.unused)} ({size})", unused_lines(plan))
    return "\n".join(lines).rstrip("\n") + "\n"
