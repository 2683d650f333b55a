"""``graft-inspect PATH_OR_CLASS``: a checkpoint's or a model class's tensors as a module
tree with shapes, dtypes and parameter counts, to write recipe rules against.

Repeated layers with identical structure fold into one branch (``layers.{0..11}``)
so a deep model fits on a screen; ``--expand`` shows every layer."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

import yaml

from torchgraft.checkpoints.formats import looks_like_checkpoint
from torchgraft.core.errors import GraftError
from torchgraft.core.heap import no_collection_at_exit
from torchgraft.core.tensors import TensorInfo, short_dtype
from torchgraft.core.text import human_bytes, printable, shape_text
from torchgraft.keys.folding import fold


@dataclass
class Node:
    name: str
    module_type: str | None = None
    tensor: TensorInfo | None = None
    children: dict[str, Node] = field(default_factory=dict)

    def numel(self) -> int:
        own = self.tensor.numel if self.tensor else 0
        return own + sum(c.numel() for c in self.children.values())

    def signature(self) -> tuple:
        """Structure without names of this node: equal for identical repeated layers."""
        t = self.tensor
        return (
            self.module_type,
            (t.shape, t.dtype) if t else None,
            tuple((k, c.signature()) for k, c in self.children.items()),
        )


MAX_DEPTH = 64


def build_tree(infos: list[TensorInfo], module_types: dict[str, str] | None = None) -> Node:
    root = Node("", (module_types or {}).get(""))
    for info in infos:
        node, path = root, []
        parts = printable(info.key).split(".")  # a key from a file: no line or escape of its own
        if len(parts) > MAX_DEPTH:  # 500 segments: the tree stops at a depth a screen (and the stack) holds
            parts = [*parts[: MAX_DEPTH - 1], ".".join(parts[MAX_DEPTH - 1 :])]
        for part in parts:
            path.append(part)
            node = node.children.setdefault(part, Node(part, (module_types or {}).get(".".join(path))))
        node.tensor = info
    return root


def _fold(children: list[Node]) -> list[tuple[str, Node, int]]:
    """Integer-named siblings of one structure share a line (``{0..11}``, ``{0,2,5}``),
    folded by the plan text's folder: (label, first node, how many it stands for)."""
    groups = fold(children, lambda node: (node.name,), Node.signature, least=2)
    return [(group.patterns[0], group.members[0], len(group.members)) for group in groups]


def render_tree(root: Node, title: str, expand: bool = False) -> str:
    total = root.numel()
    count = sum(1 for _ in _tensors(root))
    nbytes = sum(t.nbytes for t in _tensors(root))
    lines = [f"{title}  {count} tensors, {total:,} elements, {human_bytes(nbytes)}"]

    def walk(node: Node, prefix: str) -> None:
        children = list(node.children.values())
        items = [(c.name, c, 1) for c in children] if expand else _fold(children)
        for n, (label, child, count) in enumerate(items):
            last = n == len(items) - 1
            branch, indent = ("└── ", "    ") if last else ("├── ", "│   ")
            if child.tensor is not None and not child.children:
                t = child.tensor
                kind = f"  {t.kind}" if t.kind == "buffer" else ""
                lines.append(f"{prefix}{branch}{label}  {shape_text(t.shape)}  {short_dtype(t.dtype)}{kind}")
            else:
                kind = f"  {child.module_type.rpartition('.')[2]}" if child.module_type else ""
                times = f" x{count}" if count > 1 else ""
                lines.append(f"{prefix}{branch}{label}{kind}  {child.numel():,}{times}")
                walk(child, prefix + indent)

    walk(root, "")
    return "\n".join(lines) + "\n"


def _tensors(node: Node):
    if node.tensor is not None:
        yield node.tensor
    for child in node.children.values():
        yield from _tensors(child)


def _parse_kwargs(pairs: list[str]) -> dict:
    kwargs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise GraftError("graft-inspect", f"expected NAME=VALUE for a constructor argument, got '{pair}'")
        kwargs[name] = yaml.safe_load(value)
    return kwargs


def inspect_target(class_path: str, kwargs: dict, expand: bool) -> str:
    from torchgraft.core.target import build_model, model_inventory

    spec = {"_target_": class_path, **kwargs}
    model = build_model(spec, device="meta")
    types = {name: f"{type(m).__module__}.{type(m).__qualname__}" for name, m in model.named_modules()}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return render_tree(build_tree(model_inventory(model), types), f"{class_path}({args})", expand)


def inspect_checkpoint(path: str, fmt: str, key: str | None, expand: bool) -> str:
    from torchgraft.checkpoints import open_checkpoint

    with open_checkpoint(path, format=fmt, key=key, field="graft-inspect") as reader:
        infos = reader.inventory()
        title = f"{path} ({reader.format}{f', key={key}' if key else ''})"
    return render_tree(build_tree(infos), title, expand)


def main(argv: list[str] | None = None) -> None:
    no_collection_at_exit()
    parser = argparse.ArgumentParser(
        prog="graft-inspect",
        description="List a checkpoint's or a model class's tensors as a module tree.",
        epilog="examples:\n  graft-inspect model.safetensors\n  graft-inspect last.ckpt --key state_dict\n"
        "  graft-inspect torchgraft.examples.ConvNet num_classes=5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", metavar="PATH_OR_CLASS", help="a checkpoint file or HF directory, or a dotted model class")
    parser.add_argument("kwargs", nargs="*", metavar="NAME=VALUE", help="constructor arguments for a class")
    parser.add_argument("--key", help="dotted path of the state dict inside a torch checkpoint (e.g. state_dict)")
    parser.add_argument("--format", default="auto", help="auto | safetensors | torch | hf")
    parser.add_argument("--expand", action="store_true", help="show every repeated layer instead of folding them")
    args = parser.parse_args(argv)
    try:
        if os.path.exists(args.what) or looks_like_checkpoint(args.what):
            if args.kwargs:
                raise GraftError("graft-inspect", "NAME=VALUE arguments apply to a model class, not a checkpoint")
            text = inspect_checkpoint(args.what, args.format, args.key, args.expand)
        else:
            text = inspect_target(args.what, _parse_kwargs(args.kwargs), args.expand)
    except GraftError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
