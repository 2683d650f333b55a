"""Hints that fit their context: what the user wrote and what to do instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchgraft.checkpoints import open_checkpoint
from torchgraft.cli import inspect as inspect_cli
from torchgraft.core.errors import SourceError, TargetError
from torchgraft.core.target import build_model
from torchgraft.examples import ConvNet

REFUSAL = ("refused to unpickle {}: torch.load(weights_only=True) allows only tensors and "
           "plain containers, and torchgraft never runs code from a checkpoint; ")


def test_a_checkpoint_of_numpy_arrays_says_how_to_convert_it(tmp_path):
    path = tmp_path / "arrays.pt"
    torch.save({"w": np.ones(3)}, path)
    with pytest.raises(SourceError) as err:
        open_checkpoint(path, field="sources.old")
    culprit = str(err.value).split("refused to unpickle ")[1].split(":")[0]
    assert culprit.startswith("numpy.")
    assert str(err.value) == f"sources.old: {path}: " + REFUSAL.format(culprit) + (
        "it holds numpy arrays: in code you trust, load it, convert them with torch.from_numpy "
        "and save the state dict again (or save_file it as .safetensors)")


def test_a_whole_pickled_model_says_to_save_its_state_dict(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(ConvNet(), path)
    with pytest.raises(SourceError) as err:
        open_checkpoint(path, field="sources.old")
    assert str(err.value) == f"sources.old: {path}: " + REFUSAL.format("torchgraft.examples.ConvNet") + (
        "if it is a whole pickled model (torchgraft.examples.ConvNet), load it once in code you trust and "
        "save model.state_dict() instead")


def test_graft_inspect_names_its_own_flag_for_a_nested_state_dict(tmp_path, capsys):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": ConvNet().state_dict(), "epoch": 3}, path)
    with pytest.raises(SystemExit):
        inspect_cli.main([str(path)])
    assert capsys.readouterr().err == f"error: graft-inspect: {path}: the tensors are under 'state_dict': --key state_dict\n"


@pytest.mark.parametrize(("value", "shown"), [("three", "'three'"), (2.5, "2.5"), (True, "True")])
def test_a_constructor_argument_of_the_wrong_type_names_the_argument(value, shown):
    with pytest.raises(TargetError) as err:
        build_model({"_target_": "torchgraft.examples.ConvNet", "num_classes": value}, device="meta")
    assert str(err.value) == f"target.num_classes: torchgraft.examples.ConvNet expects int for 'num_classes', got {shown}"
