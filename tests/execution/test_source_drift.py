"""A source that is not, or no longer, the file the plan was made from is never published.

Readers hold their files open from the check against the plan to the last read; a file renamed
over a source's path, or rewritten in place, after the sources were opened (or while
tensors stream) is refused before the output is published, naming the source.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
import torchgraft.execution.executor as executor
from conftest import dcp
from torchgraft.checkpoints import open_checkpoint
from torchgraft.checkpoints.byteranges import read_range
from torchgraft.core.errors import DriftError
from torchgraft.execution.progress import Progress
from torchgraft.execution.sources import pin_contents

KINDS = ["safetensors", "torch", "hf", "dcp"]
FOLDERS = ("hf", "dcp")
SHARDS = {"model-00001-of-00002.safetensors": ["a", "b"], "model-00002-of-00002.safetensors": ["c"]}


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g), "c": torch.randn(2, 2, generator=g)}


def write(kind: str, where, seed: int) -> None:
    """The checkpoint of ``tensors(seed)``: for one seed or another, the same header and size."""
    values = tensors(seed)
    if kind == "safetensors":
        save_file(values, str(where))
    elif kind == "torch":
        torch.save(values, where)
    elif kind == "dcp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "assuming ... a single process": it is meant
            dcp.save(values, checkpoint_id=str(where), no_dist=True)
    else:
        where.mkdir()
        for name, keys in SHARDS.items():
            save_file({k: values[k] for k in keys}, str(where / name))
        weight_map = {k: name for name, keys in SHARDS.items() for k in keys}
        (where / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def build(tmp_path, kind: str):
    """(source path, the file of it that is changed): seed 0; seed 1 is the other file."""
    path = tmp_path / {"safetensors": "src.safetensors", "torch": "src.pt"}.get(kind, "src")
    write(kind, path, 0)
    if kind == "dcp":
        return path, path / "__0_0.distcp"
    return path, path / "model-00001-of-00002.safetensors" if kind == "hf" else path


def other_bytes(tmp_path, kind: str, changed) -> bytes:
    """What ``changed`` holds for seed 1 (same size, other values)."""
    other = tmp_path / "other"
    other.mkdir()
    source = other / (changed.parent.name if kind in FOLDERS else changed.name)  # torch.save records the name
    write(kind, source, 1)
    data = (source / changed.name if kind in FOLDERS else source).read_bytes()
    shutil.rmtree(other)
    assert len(data) == changed.stat().st_size and data != changed.read_bytes()
    return data


def rename_over(tmp_path, kind: str, changed) -> None:
    replacement = tmp_path / "replacement"
    replacement.write_bytes(other_bytes(tmp_path, kind, changed))
    os.replace(replacement, changed)


def rewrite_in_place(tmp_path, kind: str, changed, *, keep_mtime: bool = False) -> None:
    """Same inode, same size, other values; the mtime a second later (a real rewrite's
    moves with the clock), or kept as it was (``cp -p``-style)."""
    data, before = other_bytes(tmp_path, kind, changed), changed.stat()
    with open(changed, "r+b") as f:
        f.write(data)
    mtime = before.st_mtime_ns if keep_mtime else before.st_mtime_ns + 10**9
    os.utime(changed, ns=(before.st_atime_ns, mtime))


def recipe(path) -> dict:
    return {"sources": {"src": str(path)}, "target": None, "rules": [{"from": "src"}]}


@pytest.fixture
def when(monkeypatch):
    """``when(stage, change)``: run ``change()`` once, right after the plan's sources are
    opened and checked (``opened``), or after the first tensor is written (``streaming``)."""

    def arm(stage: str, change) -> None:
        if stage == "opened":
            opened = executor.open_plan_sources

            def open_then_change(plan):
                readers = opened(plan)
                change()
                return readers

            monkeypatch.setattr(executor, "open_plan_sources", open_then_change)
        else:
            update, done = Progress.update, []

            def update_then_change(self, nbytes):
                update(self, nbytes)
                if not done:
                    done.append(change())

            monkeypatch.setattr(Progress, "update", update_then_change)

    return arm


def refused(plan, out, message: str) -> None:
    with pytest.raises(DriftError) as error:
        torchgraft.execute(plan, out)
    assert str(error.value) == message
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary left either


@pytest.mark.parametrize("stage", ["opened", "streaming"])
@pytest.mark.parametrize("change", ["renamed over", "rewritten in place"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_source_replaced_or_rewritten_is_refused(tmp_path, kind, change, stage, when):
    path, changed = build(tmp_path, kind)
    plan = torchgraft.plan(recipe(path))
    if change == "renamed over":
        when(stage, lambda: rename_over(tmp_path, kind, changed))
        message = f"sources.src: {changed} was replaced while torchgraft ran (its path names another file now)"
    else:
        when(stage, lambda: rewrite_in_place(tmp_path, kind, changed))
        message = f"sources.src: {path} changed while torchgraft ran (mtime_ns differ)"
    out = tmp_path / "out" / "m.safetensors"
    out.parent.mkdir()
    refused(plan, out, message)


@pytest.mark.parametrize("kind", KINDS)
def test_with_pinned_contents_a_rewrite_that_keeps_the_mtime_is_refused(tmp_path, kind, when):
    path, changed = build(tmp_path, kind)
    plan = pin_contents(torchgraft.plan(recipe(path)))
    when("streaming", lambda: rewrite_in_place(tmp_path, kind, changed, keep_mtime=True))
    out = tmp_path / "out" / "m.safetensors"
    out.parent.mkdir()
    refused(plan, out, f"sources.src: {path} changed while torchgraft ran (content_sha256 differ)")


@pytest.mark.parametrize("kind", KINDS)
def test_every_read_comes_from_the_file_opened(tmp_path, kind):
    """Whole reads, region reads and byte ranges all read the file whose header was read,
    whatever is renamed over its path later; the reader says it was replaced."""
    path, changed = build(tmp_path, kind)
    want = tensors(0)
    with open_checkpoint(path, field="sources.src") as reader:
        before = reader.fingerprint()
        rename_over(tmp_path, kind, changed)
        for info in reader.inventory():
            assert torch.equal(reader.read(info.key), want[info.key]), info.key
            assert torch.equal(reader.read(info.key, (slice(1, 2),)), want[info.key][1:2]), info.key
            where = reader.byte_range(info.key)  # DCP chunks are torch.save blobs: no range
            assert where is None or torch.equal(read_range(where, info.dtype, info.shape), want[info.key]), info.key
        assert reader.fingerprint() == before
        assert reader.replaced() == [str(changed)]
    with open_checkpoint(path, field="sources.src") as reader:  # opened again: the new file
        assert torch.equal(reader.read("a"), tensors(1)["a"])
        assert reader.replaced() == []


class Three(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for key, value in tensors(2).items():
            self.register_parameter(key, torch.nn.Parameter(value))


def test_load_into_refuses_a_source_rewritten_while_it_is_read_and_leaves_the_model_alone(tmp_path, monkeypatch):
    path, changed = build(tmp_path, "safetensors")
    model = Three()
    materialize, done = executor.materialize, []

    def materialize_then_change(*args):
        value = materialize(*args)
        if not done:
            done.append(rewrite_in_place(tmp_path, "safetensors", changed))
        return value

    monkeypatch.setattr(executor, "materialize", materialize_then_change)
    with pytest.raises(DriftError) as error:
        torchgraft.load_into(model, recipe(path))
    assert str(error.value) == f"sources.src: {path} changed while torchgraft ran (mtime_ns differ)"
    assert all(torch.equal(value, tensors(2)[key]) for key, value in model.state_dict().items())
