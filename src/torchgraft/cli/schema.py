"""``graft-schema``: print the recipe format's JSON Schema, for editors."""

from __future__ import annotations

import json
import sys

from torchgraft.recipe.json_schema import recipe_schema


def main(argv: list[str] | None = None) -> None:
    """Console entry point: the schema as indented JSON on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: graft-schema > recipe.schema.json\n\nPrints the JSON Schema of torchgraft recipes; in a recipe,\n"
              "# yaml-language-server: $schema=recipe.schema.json\nlets the YAML language server check it as you type.")
        return
    sys.stdout.write(json.dumps(recipe_schema(), indent=2) + "\n")


if __name__ == "__main__":
    main()
