"""Keys come from files: printed in plan.txt, plan.md, the terminal and errors, none of
them can forge a plan line, close a Markdown block or send an escape to the terminal."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.plans.markdown import render_markdown

NEWLINE = "evil\nfc.weight  [2]  f32  ← trusted:fc.weight  (rules[0])"
FENCE = "x\n```\n</details>\n<img src=x onerror=alert(1)>\n```"
ANSI = "\x1b[2J\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"


def plan_of(tmp_path, keys):
    path = tmp_path / "evil.safetensors"
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    return torchgraft.plan({"sources": {"s": str(path)}, "target": None, "base": "s", "rules": [],
                            "policy": {"unassigned": "keep"}})


def test_a_key_with_a_newline_cannot_forge_a_plan_line(tmp_path):
    text = torchgraft.render(plan_of(tmp_path, [NEWLINE, "ok.weight"]))
    lines = text.splitlines()
    assert "evil\\nfc.weight  [2]  f32  ← trusted:fc.weight  (rules[0])  [2]  f32  keep" in lines
    assert not any(line.startswith("fc.weight") for line in lines)
    assert "ok.weight" in text


def test_a_key_with_a_fence_and_details_stays_inside_its_code_block(tmp_path):
    md = render_markdown(plan_of(tmp_path, [FENCE, "`" * 5]))
    lines = md.splitlines()
    opened = [i for i, line in enumerate(lines) if line.startswith("```") and line.endswith("text")]
    fence = lines[opened[0]].removesuffix("text")
    assert fence == "`" * 6  # longer than any run of backticks in the block
    assert lines.count(fence) == 1 and lines.count(fence + "text") == 1
    inside = lines[opened[0] + 1: lines.index(fence)]
    assert any("x\\n```\\n</details>\\n<img src=x onerror=alert(1)>\\n```" in line for line in inside)
    assert lines.count("</details>") == 1  # only the block's own


def test_a_key_in_the_flowchart_cannot_end_its_label_or_the_chart(tmp_path):
    md = render_markdown(plan_of(tmp_path, ['a"]\n```\n<b>.weight']))
    chart = md[md.index("```mermaid"):]
    chart = chart[:chart.index("\n```\n") + 4].splitlines()
    assert chart[-1] == "```" and sum(line.startswith("```") for line in chart) == 2
    assert any('["a#quot;]\\n#96;#96;#96;\\n#lt;b#gt;"]' in line for line in chart)


def test_terminal_escapes_in_a_key_are_shown_not_sent(tmp_path):
    text = torchgraft.render(plan_of(tmp_path, [ANSI]))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[2J\\x1b]8;;https://evil.example\\x07click\\x1b]8;;\\x07" in text
    md = render_markdown(plan_of(tmp_path, [ANSI]))
    assert "\x1b" not in md


def test_an_error_naming_an_escaped_key_is_one_line(tmp_path, capsys):
    from torchgraft.cli.inspect import main

    path = tmp_path / "evil.safetensors"
    save_file({NEWLINE: torch.zeros(2)}, str(path))
    main([str(path)])
    out = capsys.readouterr().out
    assert "└── evil\\nfc" in out and not any(line.startswith("fc") for line in out.splitlines())
