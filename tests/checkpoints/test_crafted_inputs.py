"""Crafted and corrupt checkpoints: one SourceError line each, never another exception,
and nothing that makes small input do big work (stride-0 views, FIFOs)."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

from torchgraft.checkpoints import open_checkpoint
from torchgraft.core.errors import SourceError


def safetensors_bytes(header: dict | bytes, data: bytes = b"") -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def error_of(path) -> str:
    with pytest.raises(SourceError) as info:
        open_checkpoint(path, field="sources.s").close()
    return str(info.value)


ENTRY = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


@pytest.mark.parametrize("header, reason", [
    ({"a": {**ENTRY, "dtype": ["F32"]}}, "tensor 'a' has dtype ['F32'], not a string"),
    ({"a": {**ENTRY, "dtype": {"x": 1}}}, "tensor 'a' has dtype {'x': 1}, not a string"),
    ({"a": {**ENTRY, "shape": [[]]}}, "tensor 'a' has shape [[]], not a list of unsigned integers"),
    ({"a": {**ENTRY, "shape": [2**64, 0], "data_offsets": [0, 0]}},
     "tensor 'a' has shape [18446744073709551616, 0], whose size overflows 64 bits"),
    ({"a": {**ENTRY, "shape": [2**63, 2, 0], "data_offsets": [0, 0]}},
     "tensor 'a' has shape [9223372036854775808, 2, 0], whose size overflows 64 bits"),
    (b'{"a": ' + b"[" * 50000 + b"]" * 50000 + b"}", "header is not valid JSON: nested too deeply"),
    (b'{"a": ' + b"7" * 5000 + b"}", "header is not valid JSON: Exceeds the limit (4300 digits) for integer "
                                     "string conversion: value has 5000 digits; use sys.set_int_max_str_digits() "
                                     "to increase the limit"),
    (b'{"\\ud800": ' + json.dumps(ENTRY).encode() + b"}", "tensor key b'\\\\ud800' is not valid Unicode (a lone "
                                                           "surrogate)"),
    (b"\xef\xbb\xbf" + json.dumps({"a": ENTRY}).encode(), "header is not valid JSON: Unexpected UTF-8 BOM (decode "
                                                          "using utf-8-sig): line 1 column 1 (char 0)"),
], ids=["dtype-list", "dtype-dict", "shape-nested", "overflow", "overflow-late", "deep", "digits", "surrogate", "bom"])
def test_a_crafted_safetensors_header_is_one_line(tmp_path, header, reason):
    path = tmp_path / "x.safetensors"
    path.write_bytes(safetensors_bytes(header, b"\0" * 4))
    assert error_of(path) == f"sources.s: {path}: not a valid safetensors file ({reason})"


def test_a_fifo_source_is_refused_at_once(tmp_path):
    path = tmp_path / "model.safetensors"
    os.mkfifo(path)
    assert error_of(path) == f"sources.s: {path}: is a FIFO, not a checkpoint file or directory"


def test_a_stride_zero_bomb_is_refused_not_expanded(tmp_path):
    path = tmp_path / "bomb.pt"
    torch.save({"w": torch.zeros(1).expand(100000, 100000)}, path)
    assert path.stat().st_size < 4096
    assert error_of(path) == (f"sources.s: {path}: tensor 'w' declares 40000000000 bytes of values, more than the "
                              f"{path.stat().st_size} bytes of the file (a stride-0 or overlapping view)")


def test_a_deep_or_huge_index_json_is_one_line(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text("[" * 100000 + "]" * 100000)
    assert error_of(folder) == (f"sources.s: {folder}: model.safetensors.index.json is not valid JSON (nested too "
                                "deeply)")


def test_a_weights_file_linking_out_of_the_folder_leaks_nothing(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    folder = tmp_path / "hf"
    folder.mkdir()
    os.symlink(secret, folder / "model.safetensors")
    message = error_of(folder)
    assert message == f"sources.s: {folder}: model.safetensors names model.safetensors, a link out of this directory"
    assert "header length" not in message


def _folder(tmp_path, kind):
    """A folder of each kind whose side file (found by its name) is replaced by a link."""
    from safetensors.torch import save_file

    folder = tmp_path / kind
    folder.mkdir()
    if kind == "dcp":
        import torch.distributed.checkpoint as dcp

        dcp.save({"w": torch.zeros(2)}, checkpoint_id=str(folder), no_dist=True)
        return folder, ".metadata"
    if kind == "hf":
        save_file({"w": torch.zeros(2)}, str(folder / "model-00001-of-00001.safetensors"))
        return folder, "model.safetensors.index.json"
    save_file({"base_model.model.fc.lora_A.weight": torch.zeros(2, 2)}, str(folder / "adapter_model.safetensors"))
    return folder, "adapter_config.json"


@pytest.mark.parametrize("kind", ["dcp", "hf", "peft"])
def test_a_side_file_linking_out_of_the_folder_is_never_read(tmp_path, kind):
    folder, name = _folder(tmp_path, kind)
    secret = tmp_path / "secret"
    secret.write_text('{"weight_map": {}, "r": 8}')  # would parse: only the refusal keeps it out
    (folder / name).unlink(missing_ok=True)
    os.symlink(secret, folder / name)
    assert error_of(folder) == f"sources.s: {folder}: {folder / name} is a link out of {folder}"
