"""``graft-check``: every committed plan (``*.plan.json`` tracked by git) checked against
its recipe, as ``graft recipe=NAME check=PATH`` does one; the pre-commit hook
(``.pre-commit-hooks.yaml``) and CI run it. Exit 1 if any plan is out of date.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from torchgraft.cli import graft
from torchgraft.plans.files import recipe_name


def committed_plans() -> list[str]:
    """The plan files git tracks under the current directory, else every one found there."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "*.plan.json"], capture_output=True, text=True, check=True)
        return sorted(p for p in listed.stdout.split("\0") if p)
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return sorted(str(p) for p in Path().rglob("*.plan.json") if "outputs" not in p.parts)


def check_one(path: str) -> int:
    """``graft recipe=NAME check=PATH`` in this process; its exit code."""
    name = recipe_name(path)
    if name is None:
        print(f"error: graft-check: {path}: a committed plan is named RECIPE.plan.json (as plan_dir writes it)", file=sys.stderr)
        return 1
    try:
        graft.main([f"recipe={name}", f"check={path}"])  # restores sys.argv and the environment itself
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``graft-check [PLAN.json ...]`` (default: every committed plan)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print("usage: graft-check [PLAN.plan.json ...]\n\nChecks each committed plan (default: every *.plan.json git tracks) against\n"
              "its recipe, as graft recipe=NAME check=PLAN does; exit 1 if any is out of date.")
        return
    plans = args or committed_plans()
    failed = [path for path in plans if check_one(path) != 0]
    if failed:
        print(f"error: graft-check: {len(failed)} of {len(plans)} plans out of date: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    print(f"graft-check: {len(plans)} plan{'s' if len(plans) != 1 else ''} up to date")
