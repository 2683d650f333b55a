"""Fuzzing the untrusted inputs: any bytes given as a checkpoint, a model folder or a
plan, and any recipe mapping, give a reader, a plan or a ``GraftError``; never another
exception.

CI runs a few dozen examples per target (seconds). A longer run:

    TORCHGRAFT_FUZZ_EXAMPLES=20000 pytest -q tests/fuzz -p no:cacheprovider

(hypothesis keeps a failing example in .hypothesis/ and replays it first next time).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import torchgraft
from torchgraft.checkpoints import open_checkpoint
from torchgraft.core.errors import GraftError
from torchgraft.plans.codec import document_sha256
from torchgraft.plans.files import read_plan, write_plan

EXAMPLES = int(os.environ.get("TORCHGRAFT_FUZZ_EXAMPLES", "40"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["F32", "BF16", "I64", "shape", "dtype", "data_offsets", "__metadata__"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "I8", "BOOL", "X"]) | json_values,
    "shape": st.lists(st.integers(min_value=-1, max_value=2**65), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(min_value=-1, max_value=64), min_size=2, max_size=2) | json_values,
})
headers = st.dictionaries(st.text(max_size=6) | st.just("__metadata__"), entries | json_values, max_size=4)


def opened(path: Path, fmt: str = "auto") -> None:
    try:
        reader = open_checkpoint(path, format=fmt, field="sources.s")
    except GraftError:
        return
    try:
        for info in reader.inventory():
            with contextlib.suppress(GraftError):
                reader.read(info.key)
    finally:
        reader.close()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@fuzz
@given(header=headers, data=st.binary(max_size=64))
def test_safetensors_headers(tmp_path, header, data):
    body = json.dumps(header).encode()
    opened(write(tmp_path / "x.safetensors", struct.pack("<Q", len(body)) + body + data))


@fuzz
@given(raw=st.binary(max_size=200))
def test_safetensors_bytes(tmp_path, raw):
    opened(write(tmp_path / "x.safetensors", raw))
    opened(write(tmp_path / "x.bin", raw))


def _torch_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.int64)}, buffer)
    return buffer.getvalue()


TORCH = _torch_bytes()


@fuzz
@given(cut=st.integers(min_value=0, max_value=len(TORCH)),
       flips=st.lists(st.tuples(st.integers(min_value=0, max_value=len(TORCH) - 1), st.integers(1, 255)), max_size=4))
def test_torch_files(tmp_path, cut, flips):
    data = bytearray(TORCH)
    for at, bit in flips:
        data[at] ^= bit
    opened(write(tmp_path / "x.pt", bytes(data[:cut] if cut < len(data) else data)))


@fuzz
@given(index=json_values | st.fixed_dictionaries({"weight_map": st.dictionaries(st.text(max_size=6), json_values
                                                                                 | st.sampled_from(["a.safetensors", "../a.safetensors", "/etc/passwd", "sub/a.safetensors"]),
                                                                                 max_size=3), "metadata": json_values}))
def test_hf_folders(tmp_path, index):
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(folder / "a.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    opened(folder, "hf")


@pytest.fixture(scope="module")
def plan_document(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzplan")
    torch.manual_seed(0)
    save_file({"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 4)},
              str(folder / "s.safetensors"))
    plan = torchgraft.plan({"sources": {"s": str(folder / "s.safetensors")}, "target": None,
                            "rules": [{"from": "s", "select": ["a"], "rename": {"a": "x"}},
                                      {"to": "y", "from": "s:b.weight[0:1]", "transform": [{"scale": 2}]},
                                      {"to": "z", "from": ["s:a.bias", "s:a.bias"], "merge": {"weights": [0.5, 0.5]}}],
                            "policy": {"unused": "ignore"}})
    return json.loads(write_plan(plan, folder / "p.plan").read_text())


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@fuzz
@given(data=st.data())
def test_plan_files(tmp_path, plan_document, data):
    doc = json.loads(json.dumps(plan_document))
    paths = [p for p in _paths(doc) if p and p[0] != "sha256"]
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(paths))
        node = doc
        try:
            for part in where[:-1]:
                node = node[part]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(node, dict) and isinstance(where[-1], str) or isinstance(node, list) and isinstance(where[-1], int) and where[-1] < len(node):
            node[where[-1]] = data.draw(json_values)  # a JSON document still: no int key in an object
    doc["sha256"] = document_sha256(doc)
    path = tmp_path / "f.plan.json"
    path.write_text(json.dumps(doc))
    try:
        plan = read_plan(str(path), "apply")
    except GraftError:
        return
    torchgraft.render(plan)


patterns = st.sampled_from(["a", "a.*", "**.bias", "a.weight", "b", "{i}", "*", "x", "re:^a\\.", "a{0..2}"])
rules = st.one_of(
    st.fixed_dictionaries({"from": st.sampled_from(["s", "t", 3]), "select": st.lists(patterns, max_size=2) | json_values},
                          optional={"rename": st.dictionaries(patterns, patterns, max_size=2) | json_values,
                                    "transform": st.lists(st.sampled_from(["transpose", {"scale": 2}, {"cast": "float16"},
                                                                           {"pad_rows": {"to": 9}}]), max_size=2) | json_values,
                                    "exclude": st.lists(patterns, max_size=1)}),
    st.fixed_dictionaries({"to": st.sampled_from(["y", "y[0:1]", "a.weight[:, :2]", "q"]) | json_values,
                           "from": st.sampled_from(["s:b.weight", "s:a.weight[0:1]", "t:x", "s:b.weight[9]"]) | json_values}),
    json_values,
)


@fuzz
@given(rule_list=st.lists(rules, max_size=3), policy=st.dictionaries(st.sampled_from(["unassigned", "unused", "mismatch"]),
                                                                     st.sampled_from(["keep", "ignore", "skip", "error", "warn"]) | json_values, max_size=2),
       target=st.sampled_from([None, {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 4}]) | json_values,
       extra=st.dictionaries(st.sampled_from(["keep", "base", "target_seed", "output"]), json_values, max_size=2))
def test_recipes(tmp_path, plan_document, rule_list, policy, target, extra):
    source = plan_document["sources"][0]["path"]
    recipe = {"sources": {"s": source}, "target": target, "rules": rule_list, "policy": policy, **extra}
    with contextlib.suppress(GraftError):
        torchgraft.plan(recipe)
