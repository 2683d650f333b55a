"""Hugging Face outputs that load: ``output.config`` writes a transformers target's own
config files (as its ``save_pretrained`` does), ``copy_files`` takes a directory that is
not a source (attacker-written: no link out of it), the files torchgraft wrote count as
its own when ``overwrite`` replaces the directory, and a transformers target whose output
gets no config.json is warned about."""

from __future__ import annotations

import json
import logging
import os
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

import torchgraft
from conftest import REFERENCE_LIBRARIES, ReferenceLibrary
from torchgraft.core.errors import GraftError

transformers = ReferenceLibrary("transformers")  # the `ports` extra; installed in CI
pytestmark = REFERENCE_LIBRARIES  # loads transformers' models

CONFIG = {"_target_": "transformers.LlamaConfig", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
          "tie_word_embeddings": False}
TARGET = {"_target_": "transformers.LlamaForCausalLM", "config": CONFIG}
WARNING = ("output: a transformers target's output has no config.json, so from_pretrained cannot load it; "
           "set output.config=true (and a directory output.path) to write the target's")


def hf_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "_target_"}))


@pytest.fixture
def hf_dir(tmp_path):
    """A model folder saved by transformers itself, with a tokenizer file beside it."""
    path = tmp_path / "hf"
    hf_model().save_pretrained(str(path))
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    (path / "tokenizer_config.json").write_text("{}")
    return path


def recipe(hf_dir, out, **output):
    return {"sources": {"hf": str(hf_dir / "model.safetensors")}, "target": TARGET,
            "rules": [{"from": "hf"}], "output": {"path": str(out), **output}}


def test_output_config_writes_what_save_pretrained_writes_and_the_output_loads(hf_dir, tmp_path):
    out = tmp_path / "out"
    plan = torchgraft.plan(recipe(hf_dir, out, config=True))
    listed = json.loads(plan.to_json())["output"]["config"]
    assert [f["name"] for f in listed] == ["config.json", "generation_config.json"]
    assert "files   config.json, generation_config.json (from the target's config)" in torchgraft.render(plan).splitlines()
    torchgraft.execute(plan, out)
    for name in ("config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (hf_dir / name).read_bytes(), name
    loaded = transformers.LlamaForCausalLM.from_pretrained(str(out))
    expected = load_file(hf_dir / "model.safetensors")
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    torchgraft.execute(plan, out, overwrite=True)  # the config files are torchgraft's own: replaced


def test_output_config_follows_a_cast(hf_dir, tmp_path):
    out = tmp_path / "out"
    torchgraft.execute(torchgraft.plan(recipe(hf_dir, out, config=True, dtype="bfloat16")), out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_output_config_needs_a_transformers_target(tmp_path):
    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    from safetensors.torch import save_file

    from torchgraft.examples import LinearProbe
    save_file(LinearProbe().state_dict(), str(path))
    base = {"sources": {"src": str(path)}, "rules": [{"from": "src"}], "output": {"path": str(tmp_path / "out"), "config": True}}
    with pytest.raises(GraftError) as err:
        torchgraft.plan({**base, "target": {"_target_": "torchgraft.examples.LinearProbe"}})
    assert str(err.value) == ("output.config: writes a transformers model's config.json, but the target "
                              "torchgraft.examples.LinearProbe is not a transformers PreTrainedModel "
                              "(copy a config with output.copy_files instead)")
    with pytest.raises(GraftError) as err:
        torchgraft.plan({**base, "target": None})
    assert str(err.value) == ("output.config: writes a transformers model's config.json, but the target is null "
                              "(copy a config with output.copy_files instead)")


def test_output_config_needs_a_directory_output(hf_dir, tmp_path):
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe(hf_dir, tmp_path / "out.safetensors", config=True))
    assert str(err.value) == (f"output.config: {tmp_path}/out.safetensors: config files go into a model directory; "
                              f"give output.path without an extension (e.g. {tmp_path}/out)")


def test_copy_files_from_a_directory_that_is_not_a_source(hf_dir, tmp_path):
    out = tmp_path / "out"
    plan = torchgraft.plan(recipe(hf_dir, out, copy_files={"from": str(hf_dir), "files": ["config.json", "tokenizer*"]}))
    files = json.loads(plan.to_json())["output"]["files"]
    assert [(f["folder"], f["name"]) for f in files] == [(str(hf_dir), n) for n in ("config.json", "tokenizer.json",
                                                                                   "tokenizer_config.json")]
    assert not plan.unused  # the folder is not a source: nothing of it counts as unused
    torchgraft.execute(plan, out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    torchgraft.execute(plan, out, overwrite=True)  # the copies are torchgraft's own: replaced
    transformers.LlamaForCausalLM.from_pretrained(str(out))


def test_copy_files_from_a_directory_refuses_a_link_out_of_it(hf_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (hf_dir / "tokenizer.model").symlink_to(secret)
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe(hf_dir, tmp_path / "out", copy_files={"from": str(hf_dir), "files": ["tokenizer.model"]}))
    assert str(err.value) == (f"output.copy_files.files[0]: {hf_dir}/tokenizer.model is a link out of {hf_dir}; "
                              "only regular files inside the folder are copied")
    plan = torchgraft.plan(recipe(hf_dir, tmp_path / "out", copy_files={"from": str(hf_dir), "files": ["tokenizer*"]}))
    assert [f.name for f in plan.layout.files] == ["tokenizer.json", "tokenizer_config.json"]  # the link is left out


def test_copy_files_from_a_missing_directory(hf_dir, tmp_path):
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe(hf_dir, tmp_path / "out", copy_files={"from": str(tmp_path / "nowhere"), "files": ["x"]}))
    assert str(err.value) == (f"output.copy_files.from: {tmp_path}/nowhere: no such directory "
                              "(from names a source, or a directory path)")


def test_a_config_both_copied_and_written_is_refused(hf_dir, tmp_path):
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe(hf_dir, tmp_path / "out", config=True, copy_files={"from": str(hf_dir), "files": ["config.json"]}))
    assert str(err.value) == ("output.copy_files: 'config.json' is also written from the target's config (output.config); "
                              "leave it out of copy_files")


def test_a_transformers_target_without_a_config_is_warned_about(hf_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="torchgraft"):
        torchgraft.plan(recipe(hf_dir, tmp_path / "out"))
    assert [r.getMessage() for r in caplog.records] == [WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchgraft"):
        torchgraft.plan(recipe(hf_dir, tmp_path / "out", copy_files={"from": str(hf_dir), "files": ["config.json"]}))
        torchgraft.plan(recipe(hf_dir, tmp_path / "out2", config=True))
        torchgraft.plan(recipe(hf_dir, tmp_path / "model.safetensors"))  # one file: no model folder to load
    assert not caplog.records


def test_a_written_config_that_changed_since_planning_is_refused(hf_dir, tmp_path):
    from dataclasses import replace

    plan = torchgraft.plan(recipe(hf_dir, tmp_path / "out", config=True))
    forged = replace(plan, layout=replace(plan.layout, config=(replace(plan.layout.config[0], sha256="0" * 64),)))
    with pytest.raises(GraftError) as err:
        torchgraft.execute(forged, tmp_path / "out")
    assert str(err.value) == ("output.config: the target's config.json differs from the one the plan was made with "
                              "(transformers or the target changed); re-plan")
    assert not (tmp_path / "out").exists()


def test_a_target_that_is_not_transformers_never_loads_transformers_modeling_code(monkeypatch):
    """transformers is a lazy package: its ``PreTrainedModel`` attribute imports the modeling
    code (4 s of CPU). Imported but not loaded, it must stay so while a ConvNet is planned."""

    class NotLoaded(types.ModuleType):
        def __getattr__(self, name):
            raise AssertionError(f"planning a ConvNet loaded transformers.{name}")

    monkeypatch.setitem(sys.modules, "transformers", NotLoaded("transformers"))
    monkeypatch.delitem(sys.modules, "transformers.modeling_utils", raising=False)
    assert torchgraft.plan("conv_only").entries
