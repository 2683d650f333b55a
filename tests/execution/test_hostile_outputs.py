"""Outputs never escape their directory, never copy what a model folder links to, and
never overwrite a source, whatever overwrite says."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.api import apply
from torchgraft.core.errors import GraftError
from torchgraft.examples import ConvNet
from torchgraft.plans.codec import document_sha256
from torchgraft.plans.files import write_plan


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(7)
    model = tmp_path / "hf"
    model.mkdir()
    save_file(ConvNet(num_classes=10).state_dict(), model / "model.safetensors")
    (model / "config.json").write_text('{"num_classes": 10}')
    return model


def recipe(folder: Path, output: Path, **copy) -> dict:
    return {
        "sources": {"hf": str(folder)},
        "target": None,
        "base": "hf",
        "rules": [], "policy": {"unassigned": "keep"},
        "output": {"path": str(output), "copy_files": {"from": "hf", **copy}},
    }


def error_of(cfg: dict) -> str:
    with pytest.raises(GraftError) as info:
        torchgraft.plan(cfg)
    return str(info.value)


def test_a_side_file_linking_out_of_the_folder_is_never_copied(folder, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:secret")
    os.symlink(secret, folder / "special_tokens_map.json")
    plan = torchgraft.plan(recipe(folder, tmp_path / "out"))
    assert [f.name for f in plan.layout.files] == ["config.json"]
    assert error_of(recipe(folder, tmp_path / "out", files=["special_tokens_map.json"])) == (
        f"output.copy_files.files[0]: {folder}/special_tokens_map.json is a link out of {folder}; only regular "
        "files inside the folder are copied")


def test_a_fifo_in_the_folder_is_never_copied(folder, tmp_path):
    os.mkfifo(folder / "tokenizer.json")
    plan = torchgraft.plan(recipe(folder, tmp_path / "out"))
    assert [f.name for f in plan.layout.files] == ["config.json"]
    assert error_of(recipe(folder, tmp_path / "out", files=["tokenizer.json"])) == (
        f"output.copy_files.files[0]: {folder}/tokenizer.json is not a regular file; only regular files inside "
        "the folder are copied")


def test_a_forged_traversal_name_with_the_payloads_hash_writes_nothing_outside(folder, tmp_path):
    payload = b"#!/bin/sh\necho owned\n"
    (tmp_path / "owned.sh").write_bytes(payload)  # beside the folder: hf/../owned.sh
    out = tmp_path / "victim" / "out"
    out.parent.mkdir()
    path = write_plan(torchgraft.plan(recipe(folder, out)), tmp_path / "p.plan")
    doc = json.loads(path.read_text())
    doc["output"]["files"].append({"source": "hf", "name": "../owned.sh", "size": len(payload),
                                   "sha256": hashlib.sha256(payload).hexdigest()})
    doc["sha256"] = document_sha256(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(GraftError) as info:
        apply(str(path), out)
    assert str(info.value) == (f"apply: {path}: output.files[1].name: '../owned.sh' is not a plain file name "
                               "(no directories, '..' or NUL)")
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_copies_keep_a_restrictive_mode(folder, tmp_path):
    os.chmod(folder / "config.json", 0o600)
    out = tmp_path / "out"
    torchgraft.execute(torchgraft.plan(recipe(folder, out)), out)
    assert (out / "config.json").stat().st_mode & 0o777 == 0o600


def file_recipe(source: Path, output: Path, fmt: str = "auto") -> dict:
    return {
        "sources": {"pre": {"path": str(source), "format": fmt}},
        "target": None,
        "base": "pre",
        "rules": [], "policy": {"unassigned": "keep"},
        "output": {"path": str(output), "overwrite": True},
    }


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_output_that_is_the_source_is_refused_whatever_overwrite_says(tmp_path, suffix):
    torch.manual_seed(0)
    source = tmp_path / f"a{suffix}"
    tensors = ConvNet(num_classes=10).state_dict()
    (save_file(tensors, source) if suffix == ".safetensors" else torch.save(tensors, source))
    before = source.read_bytes()
    link = tmp_path / f"link{suffix}"
    os.link(source, link)
    sym = tmp_path / f"sym{suffix}"
    os.symlink(source, sym)
    for output in (source, link, sym):
        assert error_of(file_recipe(source, output)) == (
            f"output.path: {output} is the source 'pre' ({source}); sources are never overwritten")
    assert source.read_bytes() == before


def test_an_output_directory_that_is_or_holds_the_source_is_refused(folder, tmp_path):
    before = (folder / "model.safetensors").read_bytes()
    assert error_of(file_recipe(folder, folder)) == (
        f"output.path: {folder} is the source 'pre' ({folder}); sources are never overwritten")
    inner = folder / "sub"
    assert error_of(file_recipe(folder, inner)) == (
        f"output.path: {inner} lies inside the source 'pre' ({folder}); sources are never overwritten")
    assert error_of(file_recipe(folder / "model.safetensors", folder)) == (
        f"output.path: {folder} contains the source 'pre' ({folder / 'model.safetensors'}); sources are never "
        "overwritten")
    assert (folder / "model.safetensors").read_bytes() == before
