"""``plan.md``: the plan as Markdown to paste into a pull-request comment.

The facts a reviewer weighs first (target, sources, counts) are visible; long lists
fold into ``<details>`` sections, which GitHub and GitLab render collapsed.
"""

from __future__ import annotations

import re

from torchgraft.core.text import human_bytes, printable
from torchgraft.plans.flowchart import flowchart
from torchgraft.plans.text import layout_text, nbytes, shown_path, source_stats, summary, table, target_text, unused_lines
from torchgraft.plans.types import Plan

OPEN_UP_TO = 30  # lines: a list this short is shown open


def _block(title: str, lines: list[str]) -> list[str]:
    opened = " open" if len(lines) <= OPEN_UP_TO else ""
    lines = [printable(line) for line in lines]
    fence = "`" * max(3, 1 + _longest_backticks(lines))  # a key with ``` cannot close the block
    return [f"<details{opened}><summary>{title}</summary>", "", f"{fence}text", *lines, fence, "", "</details>", ""]


def _longest_backticks(lines: list[str]) -> int:
    return max((len(run) for line in lines if "`" in line for run in re.findall("`+", line)), default=0)


def _cell(text: str) -> str:
    """``text`` as an inline code span in a table cell: escaped, its own backticks and
    pipes unable to end the span or the cell."""
    text = printable(text).replace("|", "\\|")
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (1 + _longest_backticks([text]))
    return f"{fence} {text} {fence}"


def render_markdown(plan: Plan) -> str:
    target, _, initial = target_text(plan).partition("  ")
    lines = [
        f"### torchgraft plan `{plan.sha256[:12]}`",
        "",
        *flowchart(plan),
        f"**Target** {_cell(target)}{', ' + printable(initial) if initial else ''} · torchgraft {plan.version}",
        "",
    ]
    if plan.sources:
        lines += ["| source | path | format | size | read | unused |", "|---|---|---|---|---|---|"]
        stats = source_stats(plan)
        for s in plan.sources:
            n_read, b_read, n_unused, b_unused = stats[s.name]
            nested = f" (key {_cell(s.key)})" if s.key else ""
            lines.append(
                f"| {_cell(s.name)} | {_cell(shown_path(s.path))} | {s.format}{nested} | {human_bytes(s.fingerprint['size'])} "
                f"| {n_read} ({human_bytes(b_read)}) | {n_unused} ({human_bytes(b_unused)}) |"
            )
        lines.append("")
    files = layout_text(plan)
    if files:  # what the model directory gets besides its tensors
        lines += [f"**Files** {_cell(files)}", ""]
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
