"""``graft-diff A.json B.json``: the difference between two plans, as ``check`` prints it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from torchgraft.core.errors import GraftError
from torchgraft.core.heap import paused_gc
from torchgraft.core.text import printable
from torchgraft.plans.codec import from_document
from torchgraft.plans.diff import diff_plans
from torchgraft.plans.files import hash_matches, read_document


@paused_gc()
def main(argv: Sequence[str] | None = None) -> int:
    """``graft-diff A.json B.json``: exit 0 when the plans are the same, 1 when they differ, 2 on error."""
    parser = argparse.ArgumentParser(
        prog="graft-diff",
        description="Compare two torchgraft plans (plan.json). Exit 0: the same; 1: different; 2: a file is not a plan.",
    )
    parser.add_argument("old", help="the plan before (e.g. the committed plans/NAME.plan.json)")
    parser.add_argument("new", help="the plan after")
    args = parser.parse_args(argv)
    try:
        documents = [read_document(path, None) for path in (args.old, args.new)]
    except GraftError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    for path, data in zip((args.old, args.new), documents):
        if not hash_matches(data):
            print(f"warning: {path}: the plan does not match its sha256 (was it edited by hand?)", file=sys.stderr)
    old, new = (from_document(d) for d in documents)  # checked by read_document
    result = diff_plans(old, new)
    if result.same:
        print(f"no differences: {args.old} and {args.new} describe the same transfer")
        return 0
    sys.stdout.write("\n".join(map(printable, result.text(args.old, args.new, old, new).split("\n"))))
    return 1


if __name__ == "__main__":
    sys.exit(main())
