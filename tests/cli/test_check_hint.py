"""check='s fix-it command keeps the run's overrides, so following it makes the check pass."""

from __future__ import annotations

import shlex

from conftest import graft_main


def test_following_the_hint_makes_the_check_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert graft_main(monkeypatch, "recipe=conv_only", "dry_run=true", "plan_dir=plans", "target.num_classes=7") == 0
    capsys.readouterr()
    overrides = ("target.num_classes=8", "policy.unused=ignore", "output.dtype='bfloat16'")
    assert graft_main(monkeypatch, "recipe=conv_only", "check=plans/conv_only.plan.json", *overrides) == 1
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    command = "graft recipe=conv_only dry_run=true plan_dir=plans " + shlex.join(overrides)  # quoted for a shell
    assert hint.endswith(f"re-plan and commit: {command}")
    assert graft_main(monkeypatch, *shlex.split(command)[1:]) == 0
    assert graft_main(monkeypatch, "recipe=conv_only", "check=plans/conv_only.plan.json", *overrides) == 0
